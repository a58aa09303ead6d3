//! What the webhook tests share: a stack whose API and worker allow endpoints on loopback with
//! quick retries, registering an endpoint, waiting for one to fail, and a receiver on loopback —
//! a real HTTP server that records every request it gets and answers as the test scripts it
//! (succeed, fail, hang, redirect).

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::Value;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;

use orderflow_testkit::{Stack, StackBuilder, wait_for};
use reqwest::Method;

/// The end-to-end stack with an API and workers that allow endpoints on loopback (the
/// receiver), 300 ms to answer, and retries after 50–100 ms; a delivery still failing after
/// `give_up_after_secs` is given up (three days when `None`, as by default).
pub fn stack(give_up_after_secs: Option<u64>) -> StackBuilder {
    super::stack()
        .api_config(|c| c.common.webhook_allow_private = true)
        .worker_config(move |c| {
            c.common.webhook_allow_private = true;
            c.webhooks.timeout_ms = 300;
            c.webhooks.first_retry_ms = 50;
            c.webhooks.max_retry_ms = 100;
            if let Some(secs) = give_up_after_secs {
                c.webhooks.give_up_after_secs = secs;
            }
        })
}

/// `POST /v1/webhook-endpoints` with this key and body.
pub fn create(app: &Stack, key: &str, body: &Value) -> reqwest::RequestBuilder {
    app.request(Method::POST, "/v1/webhook-endpoints")
        .header("idempotency-key", key)
        .json(body)
}

/// Registers an endpoint for the stack's client; the answer (201), secret included.
pub async fn register(app: &Stack, body: Value) -> Value {
    let response = create(app, &uuid::Uuid::new_v4().to_string(), &body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    response.json().await.unwrap()
}

/// The endpoint `id` of the stack's client (answered 200).
pub async fn endpoint(app: &Stack, id: &str) -> Value {
    let response = app
        .request(Method::GET, &format!("/v1/webhook-endpoints/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    response.json().await.unwrap()
}

/// Waits until the endpoint `id` is marked failing; returns it.
pub async fn until_failing(app: &Stack, id: &str) -> Value {
    wait_for(format!("the endpoint {id} failing"))
        .until(|| async {
            let endpoint = endpoint(app, id).await;
            if endpoint["status"] == "failing" {
                Ok(endpoint)
            } else {
                Err(endpoint)
            }
        })
        .await
}

/// How the receiver answers a request.
#[derive(Clone, Debug)]
pub enum Answer {
    /// 204.
    Ok,
    /// This status, with an empty body.
    Status(u16),
    /// Nothing for a minute (the sender gives up first).
    Hang,
    /// 307 to this URL.
    Redirect(String),
}

/// A request the receiver got, and what it answered.
#[derive(Clone, Debug)]
pub struct Got {
    pub headers: HeaderMap,
    pub body: Bytes,
    pub answered: Answer,
}

impl Got {
    /// The body as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a delivery's body is JSON")
    }

    pub fn webhook_id(&self) -> String {
        self.headers["webhook-id"].to_str().unwrap().to_owned()
    }

    pub fn succeeded(&self) -> bool {
        matches!(self.answered, Answer::Ok)
    }
}

#[derive(Default)]
struct Script {
    /// Answers for the next requests, in turn; then `then`.
    next: VecDeque<Answer>,
    then: Option<Answer>,
    got: Vec<Got>,
    /// Requests being answered now, and the most there were at once.
    open: usize,
    most_open: usize,
}

/// Counts a request open from its arrival until its answer is sent or its sender hangs up
/// (the server drops the handler then).
struct Open(Arc<Mutex<Script>>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.lock().unwrap().open -= 1;
    }
}

#[derive(Clone)]
pub struct Receiver {
    pub url: String,
    script: Arc<Mutex<Script>>,
    _stop: Arc<tokio::sync::oneshot::Sender<()>>,
}

impl Receiver {
    /// A receiver on a free loopback port that answers 204 to everything until told otherwise.
    pub async fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let script = Arc::new(Mutex::new(Script::default()));
        let app = Router::new()
            .route("/hook", post(receive))
            .with_state(script.clone());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        Receiver {
            url,
            script,
            _stop: Arc::new(stop),
        }
    }

    /// Answers the next requests with `answers`, in turn, then with `then` for good.
    pub fn script(&self, answers: impl IntoIterator<Item = Answer>, then: Answer) {
        let mut script = self.script.lock().unwrap();
        script.next = answers.into_iter().collect();
        script.then = Some(then);
    }

    /// The most requests that were open at once.
    pub fn most_at_once(&self) -> usize {
        self.script.lock().unwrap().most_open
    }

    /// Every request so far, in the order they came.
    pub fn got(&self) -> Vec<Got> {
        self.script.lock().unwrap().got.clone()
    }
}

async fn receive(
    State(script): State<Arc<Mutex<Script>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let _open = Open(script.clone());
    let answer = {
        let mut script = script.lock().unwrap();
        script.open += 1;
        script.most_open = script.most_open.max(script.open);
        let answer = script
            .next
            .pop_front()
            .or_else(|| script.then.clone())
            .unwrap_or(Answer::Ok);
        script.got.push(Got {
            headers,
            body,
            answered: answer.clone(),
        });
        answer
    };
    match answer {
        Answer::Ok => StatusCode::NO_CONTENT.into_response(),
        Answer::Status(status) => StatusCode::from_u16(status).unwrap().into_response(),
        Answer::Hang => {
            tokio::time::sleep(Duration::from_secs(60)).await;
            StatusCode::NO_CONTENT.into_response()
        }
        Answer::Redirect(to) => {
            (StatusCode::TEMPORARY_REDIRECT, [(header::LOCATION, to)]).into_response()
        }
    }
}
