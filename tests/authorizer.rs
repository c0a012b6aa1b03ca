//! An embedder's `Authorizer` (`Server::bind_with`), against a real server and real
//! WebSocket clients: asked only where it says, awaited without holding up other
//! connections, its answers cached as long as it says, and refused alongside the HTTP
//! hooks.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::TestServer;
use serde_json::json;
use sigmahub::auth::permissions::Identity;
use sigmahub::hooks::{
    Attempt, Authorizer, Caller, Connected, Decision, Hook, HookError, Ruling, Verdict,
};
use sigmahub::{Channel, Server};

/// Knows every token `user-<name>`; lets each user into `team.<name>` only, remembering
/// the answer for an hour; counts what it is asked. With a `gate`, each subscribe check
/// waits for a permit.
#[derive(Default)]
struct Teams {
    gate: Option<tokio::sync::Semaphore>,
    authenticated: AtomicUsize,
    checked: AtomicUsize,
}

/// The authorizer the server holds; the test keeps the [`Teams`] to read.
struct Authority(Arc<Teams>);

impl Authorizer for Authority {
    fn checks(&self, hook: Hook, channel: Option<&Channel>) -> bool {
        match hook {
            Hook::Connect => true,
            Hook::Subscribe => channel.is_some_and(|c| c.starts_with("team.")),
            Hook::Publish | Hook::Request => false,
        }
    }

    fn authenticate(&self, attempt: Attempt) -> Decision<Result<Connected, HookError>> {
        let teams = self.0.clone();
        Box::pin(async move {
            teams.authenticated.fetch_add(1, Ordering::SeqCst);
            let token = attempt.token.unwrap_or_default();
            let user = token
                .strip_prefix("user-")
                .ok_or_else(|| HookError::Refused(format!("{token:?} is nobody")))?;
            Ok(Connected {
                identity: Identity::user(user),
                join: Vec::new(),
            })
        })
    }

    fn check_subscribe(&self, caller: Caller, channel: Channel) -> Decision<Ruling> {
        let teams = self.0.clone();
        Box::pin(async move {
            if let Some(gate) = &teams.gate {
                gate.acquire().await.expect("open").forget();
            }
            teams.checked.fetch_add(1, Ordering::SeqCst);
            let own = channel.strip_prefix("team.") == Some(caller.identity.subject.as_str());
            Ruling {
                verdict: match own {
                    true => Verdict::Allow,
                    false => Verdict::Refuse("another team's".into()),
                },
                cache_for: Duration::from_secs(3600),
            }
        })
    }
}

async fn connect(server: &TestServer, token: &str) -> common::Client {
    let mut client = server.raw_client_at(&format!("/ws?token={token}")).await;
    let answer = client.recv_type("auth_response").await;
    assert_eq!(answer["data"]["success"], true, "{answer}");
    client.recv_type("notification").await;
    client
}

#[tokio::test]
async fn an_embedders_authorizer_decides_who_connects_and_what_they_join() {
    let teams = Arc::new(Teams::default());
    let server = TestServer::with_authorizer(Arc::new(Authority(teams.clone())), |_| {}).await;
    let mut ann = connect(&server, "user-ann").await;
    let reply = ann.subscribe(&["team.ann", "team.bo", "news"]).await;
    assert_eq!(
        reply["data"]["subscribed"],
        json!(["team.ann", "news"]),
        "{reply}"
    );
    assert_eq!(reply["data"]["rejected"][0]["reason"], "another team's");
    // `news` was not its business.
    assert_eq!(teams.checked.load(Ordering::SeqCst), 2);
    // Ann's second connection: both answers come from the cache.
    let mut again = connect(&server, "user-ann").await;
    let reply = again.subscribe(&["team.ann", "team.bo"]).await;
    assert_eq!(reply["data"]["subscribed"], json!(["team.ann"]), "{reply}");
    assert_eq!(teams.checked.load(Ordering::SeqCst), 2);
    assert_eq!(teams.authenticated.load(Ordering::SeqCst), 2);

    let mut nobody = server.raw_client_at("/ws?token=guest").await;
    let answer = nobody.recv_type("auth_response").await;
    assert_eq!(
        answer["data"]["error"]["message"],
        "refused by the application: \"guest\" is nobody"
    );
    assert_eq!(nobody.closed().await, Some(4003));
}

#[tokio::test]
async fn a_slow_authorizer_holds_up_only_the_connection_it_answers() {
    let teams = Arc::new(Teams {
        gate: Some(tokio::sync::Semaphore::new(0)),
        ..Teams::default()
    });
    let server = TestServer::with_authorizer(Arc::new(Authority(teams.clone())), |_| {}).await;
    let mut ann = connect(&server, "user-ann").await;
    let mut bo = connect(&server, "user-bo").await;
    // Ann's subscribe waits on the authorizer, which answers only once Bo has been
    // answered: were Bo held up by it, neither would be.
    ann.send(&json!({"type": "subscribe", "data": {"channels": ["team.ann"]}}))
        .await;
    common::eventually("ann's check to start", || {
        teams
            .gate
            .as_ref()
            .is_some_and(|g| g.available_permits() == 0)
    })
    .await;
    bo.send(&json!({"type": "subscribe", "data": {"channels": ["news"]}}))
        .await;
    let reply = bo.recv_type("subscribe_response").await;
    assert_eq!(reply["data"]["subscribed"], json!(["news"]), "{reply}");
    assert_eq!(teams.checked.load(Ordering::SeqCst), 0);
    teams.gate.as_ref().unwrap().add_permits(1);
    let reply = ann.recv_type("subscribe_response").await;
    assert_eq!(reply["data"]["subscribed"], json!(["team.ann"]), "{reply}");
    assert_eq!(teams.checked.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn an_authorizer_and_http_hooks_are_not_both_taken() {
    let mut config = TestServer::config(|_| {});
    config.hooks.connect_url = Some("http://127.0.0.1:9/connect".into());
    let authority = Arc::new(Authority(Arc::default()));
    let err = Server::bind_with(config, authority)
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("unset their URLs"), "{err}");
}
