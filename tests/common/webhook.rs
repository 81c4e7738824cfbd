//! A webhook receiver for the notification tests: takes the registry's POSTs on a loopback
//! port and keeps them, answering as the test asks.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode as AxumStatus};
use serde_json::Value;

/// How long a test waits for events to arrive.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// How the receiver answers.
#[derive(Clone, Copy)]
pub enum Answer {
    Ok,
    /// 500 to the first `n` POSTs, then 200.
    FailFirst(usize),
    /// Takes the request and never answers.
    Never,
}

#[derive(Clone)]
pub struct Receiver {
    posts: Arc<Mutex<Vec<(HeaderMap, Value)>>>,
    answer: Answer,
}

impl Receiver {
    /// A receiver on a loopback port; its URL.
    pub async fn start(answer: Answer) -> (Self, String) {
        let receiver = Self {
            posts: Arc::default(),
            answer,
        };
        let app = axum::Router::new()
            .route("/events", axum::routing::post(receive))
            .with_state(receiver.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/events", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (receiver, url)
    }

    pub fn posts(&self) -> Vec<(HeaderMap, Value)> {
        self.posts.lock().unwrap().clone()
    }

    /// Every event received, in order (a retried event appears again).
    pub fn events(&self) -> Vec<Value> {
        self.posts()
            .into_iter()
            .flat_map(|(_, body)| body["events"].as_array().unwrap().clone())
            .collect()
    }

    /// Waits until `done` holds of the events received.
    pub async fn wait_for(&self, what: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let start = Instant::now();
        loop {
            let events = self.events();
            if done(&events) {
                return events;
            }
            assert!(
                start.elapsed() < PATIENCE,
                "no {what} after {PATIENCE:?}; received {events:#?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn receive(State(r): State<Receiver>, headers: HeaderMap, body: String) -> AxumStatus {
    let n = {
        let mut posts = r.posts.lock().unwrap();
        let value = serde_json::from_str(&body).unwrap_or(Value::String(body));
        posts.push((headers, value));
        posts.len()
    };
    match r.answer {
        Answer::Ok => AxumStatus::OK,
        Answer::FailFirst(failing) if n <= failing => AxumStatus::INTERNAL_SERVER_ERROR,
        Answer::FailFirst(_) => AxumStatus::OK,
        Answer::Never => std::future::pending().await,
    }
}
