//! The built-in demo API that `gate402 serve` fronts when it has no config,
//! so that a fresh machine has something to pay for.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::Query;
use axum::http::StatusCode;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::stream::{self, Stream, StreamExt};
use serde::Deserialize;
use serde_json::json;

use crate::config::{Auth, Rewrite, Schemes, ServiceConfig, UpstreamConfig};

#[derive(Deserialize)]
struct WeatherQuery {
    city: Option<String>,
}

async fn weather(Query(query): Query<WeatherQuery>) -> Json<serde_json::Value> {
    let city = query.city.unwrap_or_else(|| "Lisbon".into());
    // Deterministic fake data: the same city always gets the same weather.
    let seed = city
        .bytes()
        .fold(7u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)));
    let sky = ["sunny", "cloudy", "rainy", "windy"][(seed % 4) as usize];
    Json(
        json!({"city": city, "sky": sky, "temperature_c": 5 + (seed % 25), "source": "gate402 demo"}),
    )
}

#[derive(Deserialize)]
struct TranslateRequest {
    text: String,
    to: String,
}

async fn translate(
    body: Result<Json<TranslateRequest>, axum::extract::rejection::JsonRejection>,
) -> Response {
    match body {
        Ok(Json(request)) => {
            // Not a real translation: the words reversed, which is easy to check.
            let text: Vec<&str> = request.text.split_whitespace().rev().collect();
            Json(json!({"to": request.to, "text": text.join(" "), "source": "gate402 demo"}))
                .into_response()
        }
        Err(e) => (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": e.body_text(), "expected": {"text": "…", "to": "fr"}})),
        )
            .into_response(),
    }
}

async fn events() -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let ticks = stream::iter(1..=3).then(|i| async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        Ok(Event::default()
            .event("tick")
            .data(json!({"n": i}).to_string()))
    });
    Sse::new(ticks)
}

#[derive(Deserialize)]
struct ChatQuery {
    prompt: Option<String>,
}

async fn chat(Query(query): Query<ChatQuery>) -> Json<serde_json::Value> {
    // Not a model: the prompt echoed back, which is easy to check.
    let prompt = query.prompt.unwrap_or_else(|| "hello".into());
    Json(
        json!({"prompt": prompt, "answer": format!("you said: {prompt}"), "source": "gate402 demo"}),
    )
}

/// The answer streamed a word at a time, as an LLM streams tokens, ending
/// with `data: [DONE]`.
async fn chat_stream(
    Query(query): Query<ChatQuery>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let prompt = query.prompt.unwrap_or_else(|| "hello".into());
    let mut words: Vec<String> = format!("you said: {prompt}, and that is all I know")
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    words.push("[DONE]".into());
    let tokens = stream::iter(words).then(|word| async move {
        tokio::time::sleep(Duration::from_millis(60)).await;
        let data = if word == "[DONE]" {
            word
        } else {
            json!({"token": word}).to_string()
        };
        Ok(Event::default().data(data))
    });
    Sse::new(tokens)
}

async fn hello() -> Json<serde_json::Value> {
    Json(
        json!({"hello": "this route is free", "paid": ["/api/weather", "/api/translate", "/api/events", "/api/chat", "/api/chat/stream"]}),
    )
}

/// The demo API's routes.
pub fn router() -> Router {
    Router::new()
        .route("/weather", get(weather))
        .route("/translate", post(translate))
        .route("/events", get(events))
        .route("/chat", get(chat))
        .route("/chat/stream", get(chat_stream))
        .route("/hello", get(hello))
}

/// Serves the demo API on a free loopback port.
pub async fn start_upstream() -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, router()).await;
    });
    Ok((addr, task))
}

/// The demo's priced services in front of `upstream`.
pub fn services(upstream: &str) -> Vec<ServiceConfig> {
    let strip = Rewrite {
        strip_prefix: Some("/api".into()),
        add_prefix: None,
    };
    let make = |name: &str,
                path: &str,
                method: axum::http::Method,
                price: u64,
                description: &str,
                auth: Auth| {
        let mut s = ServiceConfig::new(name, path, price);
        s.priced.methods = vec![method];
        s.priced.description = description.into();
        s.priced.auth = auth;
        let mut up = UpstreamConfig::new(upstream);
        up.rewrite = strip.clone();
        s.upstream = Some(up);
        s
    };
    use axum::http::Method;
    // The weather is offered through every door, x402's too (its
    // Lightning scheme is a draft, so configured services leave it off);
    // and once more through x402 alone, for clients that pick the first
    // door they know.
    let mut weather = make(
        "weather",
        "/api/weather",
        Method::GET,
        10,
        "Weather report (demo)",
        Auth::On,
    );
    weather.priced.schemes = Schemes::ALL;
    let mut weather_x402 = make(
        "weather-x402",
        "/api/x402/weather",
        Method::GET,
        10,
        "Weather report over x402 (demo)",
        Auth::On,
    );
    weather_x402.priced.schemes = Schemes::X402;
    if let Some(up) = weather_x402.upstream.as_mut() {
        up.rewrite.strip_prefix = Some("/api/x402".into());
    }
    // A prepaid balance: a 20 sat deposit spent 1 sat a question, through
    // an L402 token or an MPP session (refunded on close).
    let mut chat = make(
        "chat",
        "/api/chat",
        Method::GET,
        1,
        "Chat, from a prepaid balance (demo)",
        Auth::On,
    );
    chat.priced = chat.priced.balance(20);
    // The same, streamed: each token is charged as it flows, 1 sat from a
    // 5 sat deposit, so a longer answer asks for a top-up mid-stream.
    let mut chat_stream = make(
        "chat-stream",
        "/api/chat/stream",
        Method::GET,
        1,
        "Chat streamed token by token, metered from a prepaid balance (demo)",
        Auth::On,
    );
    chat_stream.priced = chat_stream.priced.balance(5);
    chat_stream.priced.meter = crate::config::Meter::Events;
    chat_stream.priced.topup_wait_secs = 30;
    vec![
        weather,
        weather_x402,
        chat_stream,
        chat,
        make(
            "translate",
            "/api/translate",
            Method::POST,
            25,
            "Translation (demo)",
            Auth::On,
        ),
        make(
            "events",
            "/api/events",
            Method::GET,
            5,
            "Event stream (demo, SSE)",
            Auth::On,
        ),
        make(
            "hello",
            "/api/hello",
            Method::GET,
            1,
            "Free greeting (demo)",
            Auth::Off,
        ),
    ]
}

/// The demo's services as paid MCP tools (the event stream is not a tool).
pub fn tools() -> Vec<crate::config::ToolConfig> {
    let tool =
        |name: &str, description: &str, schema: serde_json::Value| crate::config::ToolConfig {
            name: name.into(),
            description: description.into(),
            service: name.into(),
            method: None,
            path: None,
            input_schema: schema,
            price_sats: None,
        };
    vec![
        tool(
            "weather",
            "Weather report for a city (demo)",
            serde_json::json!({
                "type": "object",
                "properties": {"city": {"type": "string", "description": "city name"}},
                "required": ["city"],
            }),
        ),
        tool(
            "translate",
            "Translate a short text (demo)",
            serde_json::json!({
                "type": "object",
                "properties": {
                    "text": {"type": "string"},
                    "to": {"type": "string", "description": "target language code, e.g. fr"},
                },
                "required": ["text", "to"],
            }),
        ),
    ]
}

/// The demo as a config: its services and tools in front of `upstream`,
/// on an ephemeral loopback port (for tests and embedding).
pub fn config(upstream: std::net::SocketAddr) -> crate::config::GatewayConfig {
    let mut config = crate::config::GatewayConfig::default_with_services(services(&format!(
        "http://{upstream}"
    )));
    config.tools = tools();
    config.listen = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    config
}
