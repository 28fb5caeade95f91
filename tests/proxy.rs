//! The agent behind an HTTP proxy (issue 14): `HTTPS_PROXY`/`HTTP_PROXY`
//! send the registry connection through a `CONNECT` tunnel (TLS stays end
//! to end), `NO_PROXY` exempts hosts, proxy credentials are sent, and a
//! proxy that refuses is named in the error. A real proxy on TCP, the real
//! registry over TLS.

use ferry_agent::{AgentError, Connection, Proxy};
use ferry_e2e::{Release, Stack, publish_to, self_signed_tls};
use ferry_testkit::ConnectProxy;

/// A TLS registry, a tenant key and a CA file for it.
async fn tls_stack() -> (Stack, String, tempfile::TempDir) {
    let (tls, ca_pem) = self_signed_tls();
    let stack = Stack::start_with_tls(Some(tls)).await;
    let token = stack.tenant("acme").await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.pem"), ca_pem).unwrap();
    (stack, token, dir)
}

fn registry_authority(stack: &Stack) -> String {
    stack.url.trim_start_matches("https://").trim_end_matches('/').to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_through_https_proxy_and_not_past_no_proxy() {
    let (stack, token, dir) = tls_stack().await;
    let proxy = ConnectProxy::start(None).await.unwrap();
    let release = Release::new(200_000, 61);
    let via = |no_proxy: &str| Connection {
        url: stack.url.clone(),
        token: token.clone(),
        ca_cert: Some(dir.path().join("ca.pem")),
        proxy: Proxy::from_values(&proxy.url(None), "", no_proxy),
    };

    let done = publish_to(&via(""), "acme", "1.0.0", &release.artifacts(), false).await.unwrap();
    assert!(done.created);
    let tunnels = proxy.requests();
    assert!(!tunnels.is_empty(), "the connection went through the proxy");
    assert!(tunnels.iter().all(|t| *t == registry_authority(&stack)), "{tunnels:?}");

    // NO_PROXY naming the registry's host: straight there.
    let before = proxy.requests().len();
    let again = publish_to(&via("example.org,localhost"), "acme", "2.0.0", &release.artifacts(), false).await.unwrap();
    assert!(again.created);
    assert_eq!(proxy.requests().len(), before, "NO_PROXY exempts the registry");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_credentials_are_sent_and_a_refusal_is_named() {
    let (stack, token, dir) = tls_stack().await;
    let proxy = ConnectProxy::start(Some("agent:s3cret")).await.unwrap();
    let release = Release::new(100_000, 62);
    let via = |proxy_url: String| Connection {
        url: stack.url.clone(),
        token: token.clone(),
        ca_cert: Some(dir.path().join("ca.pem")),
        proxy: Proxy::from_values(&proxy_url, "", ""),
    };

    let err = publish_to(&via(proxy.url(Some("agent:wrong"))), "acme", "1.0.0", &release.artifacts(), false)
        .await
        .unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, AgentError::Proxy { .. }), "{err:?}");
    assert!(message.contains(&format!("http://{}", proxy.addr)), "names the proxy: {message}");
    assert!(!message.contains("wrong"), "never the proxy's password: {message}");
    assert_eq!(proxy.requests().len(), 1, "a refused password is not retried");

    let done =
        publish_to(&via(proxy.url(Some("agent:s3cret"))), "acme", "1.0.0", &release.artifacts(), false).await.unwrap();
    assert!(done.created);

    // A proxy that is not http:// is refused, naming it.
    let err = publish_to(&via("socks5://127.0.0.1:1".into()), "acme", "1.0.0", &release.artifacts(), false)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("only http:// proxies"), "{err}");
}
