//! `GET /api/events`: the backend's event stream as Server-Sent Events.
//!
//! Each event is `event: <contract name>` (`lock.acquired`, `queue.granted`, ...) with
//! the event as JSON in `data:`. A subscriber too slow to keep up misses events rather
//! than slowing lock operations; it is then sent `event: lagged` with
//! `{"missed": N}` so it knows to re-read state. The stream ends when the server shuts
//! down.

use std::convert::Infallible;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::{Stream, StreamExt};
use tflock_core::LockEvent;
use tokio::sync::broadcast::error::RecvError;

use crate::state::AppState;

#[utoipa::path(get, path = "/api/events", tag = "events",
    summary = "Server-Sent Events: every lock and queue event from now on",
    description = "Each event is `event: <name>` (`lock.acquired`, `lock.released`, \
        `lock.expired`, `lock.transferred`, `queue.entered`, `queue.left`, \
        `queue.granted`) with the event as JSON in `data:`. A subscriber too slow to keep \
        up is sent `event: lagged` with `{\"missed\": N}`. The stream ends when the \
        server shuts down.",
    responses((status = 200, description = "An endless event stream",
        content_type = "text/event-stream", body = LockEvent)))]
pub(crate) async fn events(
    State(state): State<AppState>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    // Subscribe before answering, so every event after the response headers reach the
    // client is in its stream.
    let rx = state.backend().subscribe();
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        let event = match rx.recv().await {
            Ok(ev) => Event::default()
                .event(ev.event.as_str())
                .json_data(&ev)
                .unwrap_or_else(|e| {
                    Event::default()
                        .event("error")
                        .data(format!("could not encode event: {e}"))
                }),
            Err(RecvError::Lagged(missed)) => Event::default()
                .event("lagged")
                .data(format!("{{\"missed\":{missed}}}")),
            Err(RecvError::Closed) => return None,
        };
        Some((Ok(event), rx))
    });
    Sse::new(stream.take_until(state.closing())).keep_alive(KeepAlive::default())
}
