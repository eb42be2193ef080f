//! One JSON-RPC connection: a stream of JSON values in, responses out.

use crate::methods::{self, RpcError, code};
use alloc::format;
use alloc::vec::Vec;
use ironbay_model::Model;
use serde_json::{Map, Value, json};

/// Largest request (or batch) accepted; a bigger one is a parse error and
/// ends the connection, since the stream can no longer be trusted.
pub const MAX_REQUEST: usize = 1 << 20;

/// What a deferred reply waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    /// `bdevperf_run`: the benchmark's end.
    Bench,
    /// `framework_wait_init` before `framework_start_init`.
    Init,
}

#[derive(Default)]
pub struct Session {
    buf: Vec<u8>,
    out: Vec<u8>,
    closed: bool,
    /// A request answered later, and what it waits for.
    deferred: Option<(Value, Wait)>,
}

fn error(id: Value, e: RpcError) -> Value {
    json!({ "jsonrpc": "2.0", "id": id, "error": { "code": e.code, "message": e.message } })
}

fn invalid(message: &str) -> RpcError {
    RpcError {
        code: code::INVALID_REQUEST,
        message: message.into(),
    }
}

impl Session {
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes received bytes and answers every complete request in them.
    pub fn handle_input(&mut self, data: &[u8], model: &mut Model<'_>) {
        if self.closed {
            return;
        }
        self.buf.extend_from_slice(data);
        loop {
            let start = self
                .buf
                .iter()
                .position(|b| !b.is_ascii_whitespace())
                .unwrap_or(self.buf.len());
            self.buf.drain(..start);
            if self.buf.is_empty() {
                return;
            }
            let mut stream = serde_json::Deserializer::from_slice(&self.buf).into_iter::<Value>();
            match stream.next() {
                Some(Ok(v)) => {
                    let used = stream.byte_offset();
                    self.buf.drain(..used);
                    if let Some(reply) = self.dispatch(v, model) {
                        self.send(&reply);
                    }
                }
                Some(Err(e)) if e.is_eof() => {
                    if self.buf.len() > MAX_REQUEST {
                        self.parse_error("request too large");
                    }
                    return;
                }
                Some(Err(_)) => return self.parse_error("Parse error"),
                None => return,
            }
        }
    }

    fn parse_error(&mut self, message: &str) {
        self.send(&error(
            Value::Null,
            RpcError {
                code: code::PARSE_ERROR,
                message: message.into(),
            },
        ));
        self.buf.clear();
        self.closed = true;
    }

    fn send(&mut self, v: &Value) {
        if let Ok(s) = serde_json::to_string(v) {
            self.out.extend_from_slice(s.as_bytes());
            self.out.push(b'\n');
        }
    }

    fn dispatch(&mut self, v: Value, model: &mut Model<'_>) -> Option<Value> {
        match v {
            Value::Array(reqs) if reqs.is_empty() => {
                Some(error(Value::Null, invalid("empty batch")))
            }
            Value::Array(reqs) => {
                let replies: Vec<Value> = reqs
                    .into_iter()
                    .filter_map(|r| self.one(r, model, true))
                    .collect();
                (!replies.is_empty()).then_some(Value::Array(replies))
            }
            other => self.one(other, model, false),
        }
    }

    /// One request; `None` for notifications.
    fn one(&mut self, v: Value, model: &mut Model<'_>, batched: bool) -> Option<Value> {
        let Value::Object(mut req) = v else {
            return Some(error(Value::Null, invalid("request must be an object")));
        };
        let id = req.remove("id");
        let notification = id.is_none();
        let id = id.unwrap_or(Value::Null);
        if !matches!(id, Value::Null | Value::Number(_) | Value::String(_)) {
            return Some(error(
                Value::Null,
                invalid("id must be a number, string or null"),
            ));
        }
        if req.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
            return Some(error(id, invalid("jsonrpc must be \"2.0\"")));
        }
        let Some(Value::String(method)) = req.remove("method") else {
            return Some(error(id, invalid("method must be a string")));
        };
        let params = match req.remove("params") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(p)) => p,
            Some(_) => return Some(error(id, RpcError::params("params must be an object"))),
        };
        let wait = match methods::lookup(&method).map(|m| m.name) {
            Some("bdevperf_run") => Some(Wait::Bench),
            Some("framework_wait_init") if !*model.initialized => Some(Wait::Init),
            _ => None,
        };
        if wait.is_some() && notification {
            // Nobody would hear the result.
            return None;
        }
        if wait.is_some() && (batched || self.deferred.is_some()) {
            return Some(error(
                id,
                invalid(&format!("{method} must be sent alone, one at a time")),
            ));
        }
        let result = methods::call(model, &method, &params);
        if notification {
            return None;
        }
        if let Some(w) = wait
            && result.is_ok()
        {
            self.deferred = Some((id, w));
            return None;
        }
        Some(match result {
            Ok(r) => json!({ "jsonrpc": "2.0", "id": id, "result": r }),
            Err(e) => error(id, e),
        })
    }

    /// Answers the deferred request if it waits for `what`.
    pub fn complete_deferred(&mut self, what: Wait, result: Result<Value, RpcError>) {
        if let Some((id, _)) = self.deferred.take_if(|(_, w)| *w == what) {
            let v = match result {
                Ok(r) => json!({ "jsonrpc": "2.0", "id": id, "result": r }),
                Err(e) => error(id, e),
            };
            self.send(&v);
        }
    }

    pub fn poll_output(&self) -> &[u8] {
        &self.out
    }

    pub fn consume_output(&mut self, n: usize) {
        self.out.drain(..n.min(self.out.len()));
    }

    /// A parse error ended the session; close once the output is sent.
    pub fn closed(&self) -> bool {
        self.closed
    }

    /// Requests are not read while this much output waits.
    pub fn wants_input(&self) -> bool {
        !self.closed && self.out.len() < MAX_REQUEST
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ironbay_bdev::Registry;

    /// State a test session works on.
    struct World {
        reg: Registry,
        init: bool,
        down: bool,
        bench: Option<ironbay_bdev::bench::BenchSpec>,
    }

    impl World {
        fn new(init: bool) -> Self {
            World {
                reg: Registry::new(),
                init,
                down: false,
                bench: None,
            }
        }

        /// Feeds `input` to `s` and returns every reply so far.
        fn feed(&mut self, s: &mut Session, input: &str) -> Vec<Value> {
            let mut m = Model {
                bdevs: &mut self.reg,
                devices: None,
                nbd: None,
                iscsi: None,
                nvmf: None,
                memory_budget: 1 << 30,
                initialized: &mut self.init,
                shutdown: &mut self.down,
                bench: Some(&mut self.bench),
            };
            s.handle_input(input.as_bytes(), &mut m);
            replies(s)
        }
    }

    fn replies(s: &Session) -> Vec<Value> {
        serde_json::Deserializer::from_slice(s.poll_output())
            .into_iter::<Value>()
            .map(Result::unwrap)
            .collect()
    }

    fn session_with(input: &str) -> (Vec<Value>, Registry) {
        let mut w = World::new(true);
        let r = w.feed(&mut Session::new(), input);
        (r, w.reg)
    }

    fn code_of(v: &Value) -> i64 {
        v["error"]["code"].as_i64().unwrap_or(0)
    }

    #[test]
    fn create_list_delete_with_modern_and_seed_names() {
        let (r, reg) = session_with(concat!(
            r#"{"jsonrpc":"2.0","id":1,"method":"bdev_malloc_create","params":{"num_blocks":2048,"block_size":512}}"#,
            r#"{"jsonrpc":"2.0","id":2,"method":"construct_null_bdev","params":{"name":"Null0","num_blocks":10,"block_size":4096}}"#,
            "\n  ",
            r#"{"jsonrpc":"2.0","id":3,"method":"get_bdevs","params":{"name":"Malloc0"}}"#,
            r#"{"jsonrpc":"2.0","id":4,"method":"bdev_null_delete","params":{"name":"Null0"}}"#,
            r#"{"jsonrpc":"2.0","id":5,"method":"bdev_get_bdevs"}"#,
        ));
        assert_eq!(r[0]["result"], "Malloc0");
        assert_eq!(r[1]["result"], "Null0");
        assert_eq!(r[2]["result"][0]["num_blocks"], 2048);
        assert_eq!(r[2]["result"][0]["product_name"], "Malloc disk");
        assert_eq!(r[3]["result"], true);
        assert_eq!(r[4]["result"].as_array().unwrap().len(), 1);
        assert_eq!(reg.ids().count(), 1);
        let (r, reg) = session_with(concat!(
            r#"{"jsonrpc":"2.0","id":1,"method":"bdev_set_options","params":{"bdev_io_pool_size":1024,"bdev_io_cache_size":16}}"#,
            r#"{"jsonrpc":"2.0","id":2,"method":"set_bdev_options","params":{"bdev_io_cache_size":2048}}"#,
            r#"{"jsonrpc":"2.0","id":3,"method":"framework_get_config","params":{"name":"bdev"}}"#,
        ));
        assert_eq!(r[0]["result"], true);
        assert_eq!(code_of(&r[1]), -32602);
        assert_eq!(r[2]["result"][0]["params"]["bdev_io_pool_size"], 1024);
        assert_eq!(reg.options.bdev_io_cache_size, 16);
    }

    #[test]
    fn every_error_code() {
        let (r, _) = session_with(concat!(
            r#"{"jsonrpc":"2.0","id":1,"method":"nope"}"#,
            r#"{"jsonrpc":"2.0","id":2,"method":"bdev_malloc_create","params":{"num_blocks":"x","block_size":512}}"#,
            r#"{"jsonrpc":"2.0","id":3,"method":"bdev_malloc_create","params":{"num_blocks":8,"block_size":512,"colour":1}}"#,
            r#"{"jsonrpc":"2.0","id":4,"method":"bdev_malloc_create"}"#,
            r#"{"jsonrpc":"1.0","id":5,"method":"spdk_get_version"}"#,
            r#"{"jsonrpc":"2.0","id":6,"method":7}"#,
            r#"{"jsonrpc":"2.0","id":7,"method":"framework_start_init"}"#,
            r#"[]"#,
            r#"{"jsonrpc":"2.0","id":8,"method":"bdev_get_bdevs","params":[1]}"#,
            r#"{"jsonrpc":"2.0","id":9,"method":"bdev_malloc_delete","params":{"name":"X"}}"#,
        ));
        let codes: Vec<i64> = r.iter().map(code_of).collect();
        assert_eq!(
            codes,
            vec![
                -32601, -32602, -32602, -32602, -32600, -32600, -1, -32600, -32602, -32602
            ]
        );
        assert!(
            r[1]["error"]["message"]
                .as_str()
                .unwrap()
                .contains("num_blocks")
        );
        assert!(
            r[2]["error"]["message"]
                .as_str()
                .unwrap()
                .contains("colour")
        );
    }

    #[test]
    fn create_params_are_checked_before_anything_is_made() {
        let (r, reg) = session_with(concat!(
            r#"{"jsonrpc":"2.0","id":1,"method":"bdev_malloc_create","params":{"num_blocks":8}}"#,
            r#"{"jsonrpc":"2.0","id":2,"method":"bdev_malloc_create","params":{"num_blocks":-1,"block_size":512}}"#,
            r#"{"jsonrpc":"2.0","id":3,"method":"bdev_malloc_create","params":{"num_blocks":8,"block_size":512,"uuid":"x"}}"#,
            r#"{"jsonrpc":"2.0","id":4,"method":"bdev_null_create","params":{"name":7,"num_blocks":8,"block_size":512}}"#,
            r#"{"jsonrpc":"2.0","id":5,"method":"bdev_malloc_create","params":{"num_blocks":8,"block_size":1000}}"#,
            r#"{"jsonrpc":"2.0","id":6,"method":"bdev_malloc_create","params":{"num_blocks":8,"block_size":512,"dif_type":1}}"#,
        ));
        for (reply, why) in r.iter().zip([
            "missing `block_size`",
            "non-negative",
            "not a UUID",
            "must be a string",
            "multiple of 512",
            "not supported",
        ]) {
            assert_eq!(code_of(reply), -32602);
            let msg = reply["error"]["message"].as_str().unwrap();
            assert!(msg.contains(why), "{msg} lacks {why}");
        }
        assert_eq!(reg.ids().count(), 0);
    }

    #[test]
    fn notifications_batches_and_parse_errors() {
        let (r, reg) = session_with(concat!(
            r#"{"jsonrpc":"2.0","method":"bdev_malloc_create","params":{"num_blocks":8,"block_size":512}}"#,
            r#"[{"jsonrpc":"2.0","id":1,"method":"spdk_get_version"},{"jsonrpc":"2.0","method":"spdk_get_version"},{"jsonrpc":"2.0","id":2,"method":"rpc_get_methods"}]"#,
            r#"{"jsonrpc": "2.0", "id": 3, "method": "#,
        ));
        assert_eq!(reg.ids().count(), 1, "the notification ran");
        assert_eq!(r.len(), 1, "one batch reply; the half request waits");
        assert_eq!(r[0].as_array().unwrap().len(), 2);
        assert!(
            r[0][1]["result"]
                .as_array()
                .unwrap()
                .iter()
                .any(|m| m == "bdev_get_bdevs")
        );
        let (r, _) = session_with(r#"{"jsonrpc": "2.0", "id": 3, "method": ]}"#);
        assert_eq!(code_of(&r[0]), -32700);
    }

    #[test]
    fn benchmark_reply_waits_for_the_run() {
        let mut w = World::new(true);
        let mut s = Session::new();
        let run = |id: u32| {
            alloc::format!(
                r#"{{"jsonrpc":"2.0","id":{id},"method":"perform_tests","params":{{"bdev_name":"Malloc0","workload":"randread","io_size":4096,"queue_depth":4,"time_in_sec":1}}}}"#
            )
        };
        let input = alloc::format!(
            "{}{}{}{}",
            r#"{"jsonrpc":"2.0","id":1,"method":"bdev_malloc_create","params":{"num_blocks":64,"block_size":4096}}"#,
            r#"[{"jsonrpc":"2.0","id":9,"method":"bdevperf_run","params":{}}]"#,
            run(2),
            run(3)
        );
        let replies = w.feed(&mut s, &input);
        assert_eq!(replies.len(), 3, "no reply yet for the run: {replies:?}");
        assert_eq!(code_of(&replies[1][0]), -32600, "not in a batch");
        assert_eq!(replies[2]["id"], 3);
        assert_eq!(code_of(&replies[2]), -32600, "one at a time");
        let spec = w.bench.take().unwrap();
        assert_eq!((spec.bdev.as_str(), spec.queue_depth), ("Malloc0", 4));
        let consumed = s.poll_output().len();
        s.consume_output(consumed);
        s.complete_deferred(Wait::Init, Ok(json!({})));
        assert!(s.poll_output().is_empty(), "waits for the bench, not init");
        s.complete_deferred(Wait::Bench, Ok(json!({ "iops": 1.0 })));
        let v: Value = serde_json::from_slice(s.poll_output()).unwrap();
        assert_eq!(
            (v["id"].clone(), v["result"]["iops"].clone()),
            (json!(2), json!(1.0))
        );
    }

    #[test]
    fn wait_init_replies_once_init_starts() {
        let mut w = World::new(false);
        let mut s = Session::new();
        let r = w.feed(
            &mut s,
            concat!(
                r#"{"jsonrpc":"2.0","id":1,"method":"framework_wait_init"}"#,
                r#"{"jsonrpc":"2.0","id":2,"method":"bdev_get_bdevs"}"#,
                r#"{"jsonrpc":"2.0","id":3,"method":"bdev_set_options","params":{"bdev_io_pool_size":4096}}"#,
                r#"{"jsonrpc":"2.0","id":4,"method":"framework_start_init"}"#,
                r#"{"jsonrpc":"2.0","id":5,"method":"framework_wait_init"}"#,
            ),
        );
        let ids: Vec<&Value> = r.iter().map(|v| &v["id"]).collect();
        assert_eq!(ids, [2, 3, 4, 5], "id 1 waits: {r:?}");
        assert_eq!(code_of(&r[0]), -1);
        assert_eq!(
            (&r[1]["result"], &r[2]["result"]),
            (&json!(true), &json!(true))
        );
        assert!(w.init);
        let n = s.poll_output().len();
        s.consume_output(n);
        s.complete_deferred(Wait::Init, Ok(json!(true)));
        let v: Value = serde_json::from_slice(s.poll_output()).unwrap();
        assert_eq!((&v["id"], &v["result"]), (&json!(1), &json!(true)));
    }

    #[test]
    fn oversized_request_is_refused() {
        let big = alloc::format!(
            "{{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"{}",
            "x".repeat(MAX_REQUEST + 10)
        );
        let (r, _) = session_with(&big);
        assert_eq!(code_of(&r[0]), -32700);
    }
}
