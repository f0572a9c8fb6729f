//! What every service's OpenAPI 3.1 document shares: the `Problem` schema as the `default`
//! response of every operation, bearer credentials, the `X-Tenant-Id` header, and serving
//! the document at `/openapi.json` with Swagger UI at `/docs`.

use axum::Router;
use utoipa::openapi::path::{Parameter, ParameterBuilder, ParameterIn};
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{
    ComponentsBuilder, ContentBuilder, ObjectBuilder, OpenApi, Ref, RefOr, Required, Type,
};
use utoipa::{PartialSchema, ToSchema};

use crate::problem::{FieldError, ProblemDetails};

/// Media type of every error body.
pub const PROBLEM_JSON: &str = "application/problem+json";

fn tenant_parameter() -> Parameter {
    ParameterBuilder::new()
        .name("X-Tenant-Id")
        .parameter_in(ParameterIn::Header)
        .required(Required::False)
        .description(Some(
            "Another tenant to act in (1-64 ASCII letters, digits, '_', '-', '.'): only an \
             admin of the platform tenant may name one; absent, the credential's own tenant."
                .to_owned(),
        ))
        .schema(Some(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some("^[A-Za-z0-9_.-]{1,64}$"))
                .build(),
        ))
        .build()
}

/// Name of the security scheme every operation requires.
pub const BEARER: &str = "bearer";

/// Completes a service's document: registers `Problem`, makes it the `default` response
/// (`application/problem+json`) of every operation, requires bearer credentials (a JWT
/// or an API key) of every operation, and adds the `X-Tenant-Id` header to the operations
/// under a path starting with one of `tenant_scoped`.
pub fn finish(mut api: OpenApi, tenant_scoped: &[&str]) -> OpenApi {
    let problem = ResponseBuilder::new()
        .description("An error, as RFC 9457 problem details")
        .content(
            PROBLEM_JSON,
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("Problem")))
                .build(),
        )
        .build();
    let components = api.components.take().unwrap_or_default();
    let components = ComponentsBuilder::from(components)
        .schema(ProblemDetails::name(), ProblemDetails::schema())
        .schema(FieldError::name(), FieldError::schema())
        .response("Problem", problem)
        .security_scheme(
            BEARER,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT or flk_ API key")
                    .description(Some(
                        "A JWT signed by a key of AUTH_JWKS_FILE/AUTH_JWKS_URL, or an API key; \
                         the tenant and role come from it (README: Access)",
                    ))
                    .build(),
            ),
        )
        .build();
    api.components = Some(components);
    api.security = Some(vec![SecurityRequirement::new(BEARER, Vec::<String>::new())]);
    for (path, item) in api.paths.paths.iter_mut() {
        let scoped = tenant_scoped.iter().any(|prefix| path.starts_with(prefix));
        let operations = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
        ];
        for operation in operations.into_iter().flatten() {
            operation
                .responses
                .responses
                .entry("default".into())
                .or_insert_with(|| RefOr::Ref(Ref::from_response_name("Problem")));
            if scoped {
                operation
                    .parameters
                    .get_or_insert_with(Vec::new)
                    .push(RefOr::T(tenant_parameter()));
            }
        }
    }
    api
}

/// Routes serving `api` at `/openapi.json` and Swagger UI (bundled, works offline) at `/docs`.
pub fn docs<S>(api: OpenApi) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    utoipa_swagger_ui::SwaggerUi::new("/docs")
        .url("/openapi.json", api)
        .into()
}
