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

use crate::config::ServiceConfig;

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

/// The demo's priced services, as a config file writes them (so that the
/// admin API shows and edits them as it does a file's). `{upstream}` is
/// replaced by the demo API's URL.
const SERVICES: &str = r#"
# Test money only: the demo's metrics are everyone's to read.
[server]
public_metrics = true

# The weather is offered through every door, x402's too (its Lightning
# scheme is a draft, so configured services leave it off); and once more
# through x402 alone, for clients that pick the first door they know.
[[services]]
name = "weather"
path = "/api/weather"
methods = ["GET"]
price_sats = 10
schemes = "all"
description = "Weather report (demo)"
upstream = "{upstream}"
rewrite = { strip_prefix = "/api" }

[[services]]
name = "weather-x402"
path = "/api/x402/weather"
methods = ["GET"]
price_sats = 10
schemes = "x402"
description = "Weather report over x402 (demo)"
upstream = "{upstream}"
rewrite = { strip_prefix = "/api/x402" }

# The same, streamed: each token is charged as it flows, 1 sat from a 5 sat
# deposit, so a longer answer asks for a top-up mid-stream.
[[services]]
name = "chat-stream"
path = "/api/chat/stream"
methods = ["GET"]
price_sats = 1
sells = "balance"
deposit_units = 5
meter = "events"
topup_wait_secs = 30
description = "Chat streamed token by token, metered from a prepaid balance (demo)"
upstream = "{upstream}"
rewrite = { strip_prefix = "/api" }

# A prepaid balance: a 20 sat deposit spent 1 sat a question, through an
# L402 token or an MPP session (refunded on close).
[[services]]
name = "chat"
path = "/api/chat"
methods = ["GET"]
price_sats = 1
sells = "balance"
deposit_units = 20
description = "Chat, from a prepaid balance (demo)"
upstream = "{upstream}"
rewrite = { strip_prefix = "/api" }

[[services]]
name = "translate"
path = "/api/translate"
methods = ["POST"]
price_sats = 25
description = "Translation (demo)"
upstream = "{upstream}"
rewrite = { strip_prefix = "/api" }

[[services]]
name = "events"
path = "/api/events"
methods = ["GET"]
price_sats = 5
description = "Event stream (demo, SSE)"
upstream = "{upstream}"
rewrite = { strip_prefix = "/api" }

[[services]]
name = "hello"
path = "/api/hello"
methods = ["GET"]
auth = "off"
description = "Free greeting (demo)"
upstream = "{upstream}"
rewrite = { strip_prefix = "/api" }
"#;

/// The demo as a config in front of `upstream` (a URL): its services, with
/// their tables, and its paid MCP tools; the other settings are the
/// defaults.
pub fn gateway_config(upstream: &str) -> crate::config::GatewayConfig {
    let text = SERVICES.replace("{upstream}", upstream);
    let mut config = crate::config::GatewayConfig::parse(&text, |_| None)
        .expect("the demo's services pass the config's checks");
    config.tools = tools();
    config
}

/// The demo's priced services in front of `upstream`.
pub fn services(upstream: &str) -> Vec<ServiceConfig> {
    gateway_config(upstream).services
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
    let mut config = gateway_config(&format!("http://{upstream}"));
    config.listen = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    config
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Auth, Meter, Schemes, Sells};

    #[test]
    fn the_demo_services_read_as_a_config_file_with_their_tables() {
        let config = gateway_config("http://127.0.0.1:9");
        assert!(config.warnings.is_empty(), "{:?}", config.warnings);
        assert_eq!(config.service_tables.len(), config.services.len());
        let by_name = |name: &str| {
            config
                .services
                .iter()
                .find(|s| s.name() == name)
                .unwrap()
                .clone()
        };
        assert_eq!(by_name("weather").priced.schemes, Schemes::ALL);
        assert_eq!(by_name("weather-x402").priced.schemes, Schemes::X402);
        let chat = by_name("chat").priced;
        assert_eq!((chat.sells, chat.deposit_units), (Sells::Balance, 20));
        let stream = by_name("chat-stream").priced;
        assert_eq!(stream.meter, Meter::Events);
        assert_eq!(stream.topup_wait_secs, 30);
        assert_eq!(by_name("hello").priced.auth, Auth::Off);
        let weather = by_name("weather");
        let upstream = weather.upstream.unwrap();
        assert_eq!(upstream.rewrite.strip_prefix.as_deref(), Some("/api"));
        assert_eq!(config.tools.len(), 2);
    }
}
