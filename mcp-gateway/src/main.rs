//! `mcp-gateway`: will let AI agents use the engine over MCP (rmcp, Streamable HTTP and
//! stdio) and let workflow steps call external MCP servers. Not built yet: this crate
//! holds its place in the workspace until its issue is taken.

fn main() {
    eprintln!(
        "mcp-gateway is not implemented yet: it will expose the workflow engine to MCP clients \
         and let `mcp_tool` steps call external MCP servers"
    );
    std::process::exit(2);
}
