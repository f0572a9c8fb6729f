//! The client side of a session: routes each `notifications/progress` to the call whose
//! progress token it names.
//!
//! rmcp gives a request its progress token as it sends it, so a fast server's first
//! notification can arrive before the call has subscribed: a few such early notifications
//! are kept and handed over on subscription. rmcp handles each notification on a task of
//! its own, so two can overtake each other; progress only ever grows (the protocol says
//! so), so one that is not ahead of what was delivered is dropped and the callback sees a
//! steady climb.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};

use rmcp::ClientHandler;
use rmcp::model::{
    ClientCapabilities, ClientConfig, Implementation, ProgressNotificationParam, ProgressToken,
};
use rmcp::service::{NotificationContext, RoleClient};

use crate::{ProgressCallback, ToolProgress};

/// Early notifications kept per session (for calls that have not subscribed yet).
const EARLY_KEPT: usize = 64;

struct Subscriber {
    callback: ProgressCallback,
    delivered: Option<f64>,
}

#[derive(Default)]
struct Routes {
    subscribers: HashMap<ProgressToken, Subscriber>,
    early: VecDeque<ProgressNotificationParam>,
}

/// Progress routes of one session.
#[derive(Clone, Default)]
pub(crate) struct ProgressRouter {
    routes: Arc<Mutex<Routes>>,
}

impl ProgressRouter {
    fn routes(&self) -> std::sync::MutexGuard<'_, Routes> {
        self.routes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sends the notifications of `token` to `callback` until the returned guard drops.
    pub(crate) fn subscribe(
        &self,
        token: ProgressToken,
        callback: ProgressCallback,
    ) -> Subscription {
        let early: Vec<ProgressNotificationParam> = {
            let mut routes = self.routes();
            routes.subscribers.insert(
                token.clone(),
                Subscriber {
                    callback,
                    delivered: None,
                },
            );
            let (mine, others): (Vec<_>, Vec<_>) = std::mem::take(&mut routes.early)
                .into_iter()
                .partition(|n| n.progress_token == token);
            routes.early = others.into();
            mine
        };
        for notification in early {
            self.deliver(notification);
        }
        Subscription {
            router: self.clone(),
            token,
        }
    }

    fn deliver(&self, notification: ProgressNotificationParam) {
        let callback = {
            let mut routes = self.routes();
            match routes.subscribers.get_mut(&notification.progress_token) {
                Some(subscriber) => {
                    if subscriber
                        .delivered
                        .is_some_and(|last| notification.progress <= last)
                    {
                        return;
                    }
                    subscriber.delivered = Some(notification.progress);
                    Arc::clone(&subscriber.callback)
                }
                None => {
                    if routes.early.len() == EARLY_KEPT {
                        routes.early.pop_front();
                    }
                    routes.early.push_back(notification);
                    return;
                }
            }
        };
        // Called outside the lock: a callback may take its time.
        callback(ToolProgress {
            progress: notification.progress,
            total: notification.total,
            message: notification.message,
        });
    }
}

/// Ends a call's subscription when dropped.
pub(crate) struct Subscription {
    router: ProgressRouter,
    token: ProgressToken,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.router.routes().subscribers.remove(&self.token);
    }
}

/// The client handler of every session: says who we are, routes progress.
#[derive(Clone)]
pub(crate) struct SessionHandler {
    pub(crate) progress: ProgressRouter,
}

impl ClientHandler for SessionHandler {
    async fn on_progress(
        &self,
        params: ProgressNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        self.progress.deliver(params);
    }

    fn get_info(&self) -> ClientConfig {
        ClientConfig::new(
            ClientCapabilities::default(),
            Implementation::new("flowline-executor", env!("CARGO_PKG_VERSION")),
        )
    }
}

#[cfg(test)]
mod tests {
    use rmcp::model::NumberOrString;

    use super::*;

    fn notification(token: i64, progress: f64) -> ProgressNotificationParam {
        ProgressNotificationParam::new(ProgressToken(NumberOrString::Number(token)), progress)
    }

    #[test]
    fn early_notifications_are_handed_over_and_progress_only_climbs() {
        let router = ProgressRouter::default();
        let seen = Arc::new(Mutex::new(Vec::new()));
        router.deliver(notification(7, 1.0));
        router.deliver(notification(8, 1.0));
        let sink = Arc::clone(&seen);
        let subscription = router.subscribe(
            ProgressToken(NumberOrString::Number(7)),
            Arc::new(move |p: ToolProgress| sink.lock().unwrap().push(p.progress)),
        );
        router.deliver(notification(7, 3.0));
        router.deliver(notification(7, 2.0)); // overtaken: dropped
        assert_eq!(*seen.lock().unwrap(), vec![1.0, 3.0]);
        drop(subscription);
        router.deliver(notification(7, 4.0));
        assert_eq!(seen.lock().unwrap().len(), 2);
        assert_eq!(router.routes().early.len(), 2, "8 and the late 7 wait");
    }
}
