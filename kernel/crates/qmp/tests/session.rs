//! A QMP session driven the way clients drive QEMU.

use ironbay_qmp::{
    Args, Dispatch, Greeting, MAX_MESSAGE, MAX_OUTPUT, MAX_PENDING, MAX_REPLY, QmpError, Session,
    Version,
};
use serde_json::{Map, Value, json};

/// Commands of a pretend appliance.
#[derive(Default)]
struct Fake {
    calls: Vec<String>,
}

impl Dispatch for Fake {
    fn commands(&self) -> &[&str] {
        // `query-version` is the session's own and must not reach us.
        &["blockdev-add", "echo", "eject", "huge", "query-version"]
    }

    fn call(&mut self, name: &str, args: &Map<String, Value>) -> Result<Value, QmpError> {
        self.calls.push(name.into());
        match name {
            "echo" => Ok(Value::Object(args.clone())),
            "blockdev-add" => {
                let mut a = Args::new(args);
                a.req_str("node-name")?;
                a.opt_bool("read-only")?;
                a.opt_u32("cache-size")?;
                a.finish()?;
                Ok(json!({}))
            }
            "eject" => Err(QmpError::device_not_found("Device 'cd0' not found")),
            "huge" => Ok(Value::String("x".repeat(MAX_REPLY))),
            _ => panic!("called with {name}"),
        }
    }
}

fn greeting() -> Greeting {
    Greeting {
        version: Version {
            major: 9,
            minor: 2,
            micro: 0,
            package: "ironbay 0.1.0".into(),
        },
    }
}

/// Takes all output and parses it line by line.
fn drain(s: &mut Session) -> Vec<Value> {
    let out = s.poll_output().to_vec();
    s.consume_output(out.len());
    assert!(out.is_ascii(), "output must be ASCII");
    let text = String::from_utf8(out).unwrap();
    assert!(text.is_empty() || text.ends_with("\r\n"), "{text:?}");
    text.split_terminator("\r\n")
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect()
}

/// Sends `input` (all of it must be taken) and returns the replies.
fn send(s: &mut Session, d: &mut Fake, input: &[u8]) -> Vec<Value> {
    assert_eq!(s.handle_input(input, d), input.len());
    drain(s)
}

/// Sends one request and returns its only reply.
fn ask(s: &mut Session, d: &mut Fake, input: &str) -> Value {
    let mut r = send(s, d, input.as_bytes());
    assert_eq!(r.len(), 1, "{input} -> {r:?}");
    r.remove(0)
}

fn error(class: &str, desc: &str) -> Value {
    json!({ "error": { "class": class, "desc": desc } })
}

fn generic(desc: &str) -> Value {
    error("GenericError", desc)
}

fn with_id(mut reply: Value, id: Value) -> Value {
    reply.as_object_mut().unwrap().insert("id".into(), id);
    reply
}

fn fresh() -> (Session, Fake) {
    let mut s = Session::new(&greeting());
    drain(&mut s);
    (s, Fake::default())
}

fn negotiated() -> (Session, Fake) {
    let (mut s, mut d) = fresh();
    let r = ask(&mut s, &mut d, r#"{"execute": "qmp_capabilities"}"#);
    assert_eq!(r, json!({ "return": {} }));
    assert!(s.is_negotiated());
    (s, d)
}

#[test]
fn greeting_comes_first() {
    let mut s = Session::new(&greeting());
    assert_eq!(s.poll_output(), greeting().greeting_bytes());
    let g = drain(&mut s);
    let want = json!({ "QMP": {
        "version": { "qemu": { "micro": 0, "minor": 2, "major": 9 }, "package": "ironbay 0.1.0" },
        "capabilities": [],
    }});
    assert_eq!(g, [want]);
}

#[test]
fn simple_reply_bytes() {
    let (mut s, mut d) = fresh();
    s.handle_input(br#"{"execute":"qmp_capabilities"}"#, &mut d);
    assert_eq!(s.poll_output(), b"{\"return\": {}}\r\n");
}

#[test]
fn commands_wait_for_negotiation() {
    let (mut s, mut d) = fresh();
    let want = error(
        "CommandNotFound",
        "Expecting capabilities negotiation with 'qmp_capabilities'",
    );
    for cmd in ["query-version", "query-commands", "echo", "no-such-thing"] {
        let r = ask(&mut s, &mut d, &format!(r#"{{"execute": "{cmd}"}}"#));
        assert_eq!(r, want, "{cmd}");
    }
    assert!(d.calls.is_empty());
    // Malformed requests get their own errors in this mode too.
    let r = ask(&mut s, &mut d, "[]");
    assert_eq!(r, generic("QMP input must be a JSON object"));
    assert!(!s.is_negotiated());
}

#[test]
fn capabilities_arguments() {
    let (mut s, mut d) = fresh();
    let cases = [
        (r#"{"oob": true}"#, "Parameter 'oob' is unexpected"),
        (
            r#"{"enable": "oob"}"#,
            "Invalid parameter type for 'enable', expected: array",
        ),
        (
            r#"{"enable": [1]}"#,
            "Invalid parameter type for 'enable[0]', expected: string",
        ),
        (
            r#"{"enable": ["foo"]}"#,
            "Parameter 'enable[0]' does not accept value 'foo'",
        ),
        (r#"{"enable": ["oob"]}"#, "Capability oob not available"),
        (
            r#"{"enable": ["oob", "oob"]}"#,
            "Capability oob, oob not available",
        ),
    ];
    for (args, desc) in cases {
        let req = format!(r#"{{"execute": "qmp_capabilities", "arguments": {args}}}"#);
        assert_eq!(ask(&mut s, &mut d, &req), generic(desc), "{args}");
        assert!(!s.is_negotiated());
    }
    let r = ask(
        &mut s,
        &mut d,
        r#"{"execute": "qmp_capabilities", "arguments": {"enable": []}}"#,
    );
    assert_eq!(r, json!({ "return": {} }));
    let r = ask(
        &mut s,
        &mut d,
        r#"{"execute": "qmp_capabilities", "id": 7}"#,
    );
    let want = error(
        "CommandNotFound",
        "Capabilities negotiation is already complete, command ignored",
    );
    assert_eq!(r, with_id(want, json!(7)));
}

#[test]
fn replies_echo_any_id() {
    let ids = [
        json!(1),
        json!(-2.5),
        json!("abc"),
        json!(null),
        json!({ "a": [1, { "b": "c" }] }),
        json!([true, "é"]),
    ];
    let (mut s, mut d) = fresh();
    for id in &ids {
        // Negotiation mode error, then the same id on success.
        let req = json!({ "execute": "query-version", "id": id }).to_string();
        let r = ask(&mut s, &mut d, &req);
        assert_eq!(r["id"], *id);
        assert_eq!(r["error"]["class"], "CommandNotFound");
    }
    let (mut s, mut d) = negotiated();
    for id in &ids {
        let req = json!({ "execute": "echo", "arguments": { "x": 1 }, "id": id }).to_string();
        assert_eq!(
            ask(&mut s, &mut d, &req),
            json!({ "return": { "x": 1 }, "id": id })
        );
        let req = json!({ "execute": "echo", "bogus": 1, "id": id }).to_string();
        let want = with_id(
            generic("QMP input member 'bogus' is unexpected"),
            id.clone(),
        );
        assert_eq!(ask(&mut s, &mut d, &req), want);
    }
}

#[test]
fn request_checks_are_worded_like_qemu() {
    let cases: &[(&str, Value)] = &[
        ("[]", generic("QMP input must be a JSON object")),
        ("123\n", generic("QMP input must be a JSON object")),
        (r#""execute""#, generic("QMP input must be a JSON object")),
        ("{}", generic("QMP input lacks member 'execute'")),
        (
            r#"{"id": 3}"#,
            with_id(generic("QMP input lacks member 'execute'"), json!(3)),
        ),
        (
            r#"{"execute": 1}"#,
            generic("QMP input member 'execute' must be a string"),
        ),
        (
            r#"{"execute": ["echo"]}"#,
            generic("QMP input member 'execute' must be a string"),
        ),
        (
            r#"{"execute": "echo", "arguments": []}"#,
            generic("QMP input member 'arguments' must be an object"),
        ),
        (
            r#"{"execute": "echo", "arguments": null}"#,
            generic("QMP input member 'arguments' must be an object"),
        ),
        (
            r#"{"execute": "echo", "foo": 1}"#,
            generic("QMP input member 'foo' is unexpected"),
        ),
        (
            r#"{"exec-oob": "query-version", "id": "o"}"#,
            with_id(
                generic("QMP input member 'exec-oob' is unexpected"),
                json!("o"),
            ),
        ),
        (
            r#"{"execute": "nope"}"#,
            error("CommandNotFound", "The command nope has not been found"),
        ),
        (
            r#"{"execute": ""}"#,
            error("CommandNotFound", "The command  has not been found"),
        ),
    ];
    let (mut s, mut d) = negotiated();
    for (req, want) in cases {
        assert_eq!(ask(&mut s, &mut d, req), *want, "{req}");
    }
    assert!(d.calls.is_empty());
}

#[test]
fn exec_oob_is_refused_before_negotiation_too() {
    let (mut s, mut d) = fresh();
    let r = ask(&mut s, &mut d, r#"{"exec-oob": "qmp_capabilities"}"#);
    assert_eq!(r, generic("QMP input member 'exec-oob' is unexpected"));
}

#[test]
fn parse_errors_have_no_id() {
    let (mut s, mut d) = negotiated();
    let cases = [
        (
            r#"{"execute": "echo", "id": 1,}"#,
            "JSON parse error, expecting value",
        ),
        (
            r#"{"execute": tru, "id": 1}"#,
            "JSON parse error, invalid keyword",
        ),
        (
            r#"{"execute": "echo", "id": 1, "id": 2}"#,
            "JSON parse error, duplicate key",
        ),
        ("}", "JSON parse error, expecting value"),
        ("nonsense ", "JSON parse error, invalid keyword 'nonsense'"),
        ("\u{7}", "JSON parse error, stray '\\x07'"),
    ];
    for (req, desc) in cases {
        assert_eq!(ask(&mut s, &mut d, req), generic(desc), "{req}");
    }
}

#[test]
fn dispatcher_commands() {
    let (mut s, mut d) = negotiated();
    let r = ask(&mut s, &mut d, r#"{"execute": "echo"}"#);
    assert_eq!(r, json!({ "return": {} }));
    let r = ask(&mut s, &mut d, r#"{"execute": "eject", "id": "e"}"#);
    assert_eq!(
        r,
        json!({ "error": { "class": "DeviceNotFound", "desc": "Device 'cd0' not found" }, "id": "e" })
    );
    let cases = [
        (r#"{}"#, "Parameter 'node-name' is missing"),
        (
            r#"{"node-name": 5}"#,
            "Invalid parameter type for 'node-name', expected: string",
        ),
        (
            r#"{"node-name": "a", "read-only": 1}"#,
            "Invalid parameter type for 'read-only', expected: boolean",
        ),
        (
            r#"{"node-name": "a", "cache-size": -1}"#,
            "Parameter 'cache-size' expects uint32",
        ),
        (
            r#"{"node-name": "a", "driver": "raw"}"#,
            "Parameter 'driver' is unexpected",
        ),
    ];
    for (args, desc) in cases {
        let req = format!(r#"{{"execute": "blockdev-add", "arguments": {args}}}"#);
        assert_eq!(ask(&mut s, &mut d, &req), generic(desc), "{args}");
    }
    let r = ask(
        &mut s,
        &mut d,
        r#"{"execute": "blockdev-add", "arguments": {"node-name": "a", "read-only": true}}"#,
    );
    assert_eq!(r, json!({ "return": {} }));
}

#[test]
fn query_version_and_commands() {
    let (mut s, mut d) = negotiated();
    let r = ask(&mut s, &mut d, r#"{"execute": "query-version"}"#);
    let version =
        json!({ "qemu": { "major": 9, "minor": 2, "micro": 0 }, "package": "ironbay 0.1.0" });
    assert_eq!(r, json!({ "return": version }));
    let r = ask(&mut s, &mut d, r#"{"execute": "query-commands"}"#);
    let mut names: Vec<&str> = r["return"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    names.sort_unstable();
    let want = [
        "blockdev-add",
        "echo",
        "eject",
        "huge",
        "qmp_capabilities",
        "query-commands",
        "query-version",
    ];
    assert_eq!(names, want);
    let r = ask(
        &mut s,
        &mut d,
        r#"{"execute": "query-version", "arguments": {"x": 1}}"#,
    );
    assert_eq!(r, generic("Parameter 'x' is unexpected"));
    assert!(d.calls.is_empty());
}

const SCRIPT: &[u8] = b"{\"execute\": \"qmp_capabilities\"}\r\n\
    {\"execute\":\"echo\",\"arguments\":{\"s\":\"}{][\\\"\"},\"id\":1}\
    {'execute': 'query-version', 'id': 'single'}\n\
    [1, 2]   \"str\" {\"execute\": \"nope\", \"id\": 3}";

#[test]
fn byte_by_byte_equals_all_at_once() {
    let (mut s, mut d) = fresh();
    let at_once = send(&mut s, &mut d, SCRIPT);
    assert_eq!(at_once.len(), 6);
    assert_eq!(at_once[1], json!({ "return": { "s": "}{][\"" }, "id": 1 }));
    assert_eq!(at_once[2]["id"], "single");
    assert_eq!(at_once[5]["id"], 3);
    let (mut s, mut d) = fresh();
    let mut one_by_one = Vec::new();
    for b in SCRIPT {
        one_by_one.extend(send(&mut s, &mut d, &[*b]));
    }
    assert_eq!(one_by_one, at_once);
}

#[test]
fn garbage_then_recovery() {
    let (mut s, mut d) = negotiated();
    let r = send(
        &mut s,
        &mut d,
        b"Hello, world!\n{\"execute\": \"echo\", \"id\": 1}",
    );
    assert_eq!(r[0], generic("JSON parse error, stray 'H'"));
    assert_eq!(r.last().unwrap(), &json!({ "return": {}, "id": 1 }));
    // Each structural character after the garbage word is a resync point.
    assert!(
        r[1..r.len() - 1]
            .iter()
            .all(|e| e["error"]["class"] == "GenericError")
    );
    // Unterminated string inside an object, then the reset byte 0xff.
    let r = send(&mut s, &mut d, b"{\"execute\": \"echo\", \"arguments\": {\"a\": \"oops\xff{\"execute\": \"echo\", \"id\": 2}");
    assert_eq!(
        r,
        [
            generic("JSON parse error, stray '\\xff'"),
            json!({ "return": {}, "id": 2 })
        ]
    );
}

#[test]
fn endless_nesting_is_one_error_and_bounded() {
    let (mut s, mut d) = negotiated();
    let chunk = vec![b'['; 64 << 10];
    let mut replies = Vec::new();
    for _ in 0..160 {
        replies.extend(send(&mut s, &mut d, &chunk));
        assert!(s.buffered_input() <= MAX_MESSAGE);
    }
    assert_eq!(replies, [generic("JSON nesting depth limit exceeded")]);
    // The brackets never balance; a reset byte ends the skipping quietly.
    let r = send(&mut s, &mut d, b"\x04{\"execute\": \"echo\", \"id\": 9}");
    assert_eq!(r, [json!({ "return": {}, "id": 9 })]);
}

#[test]
fn huge_string_is_one_error_and_bounded() {
    let (mut s, mut d) = negotiated();
    let mut replies = send(
        &mut s,
        &mut d,
        br#"{"execute": "echo", "arguments": {"s": ""#,
    );
    let chunk = vec![b'x'; 64 << 10];
    for _ in 0..160 {
        replies.extend(send(&mut s, &mut d, &chunk));
        assert!(s.buffered_input() <= MAX_MESSAGE);
    }
    replies.extend(send(
        &mut s,
        &mut d,
        br#""}, "id": 1} {"execute": "echo", "id": 2}"#,
    ));
    assert_eq!(
        replies,
        [
            generic("JSON token size limit exceeded"),
            json!({ "return": {}, "id": 2 })
        ]
    );
}

#[test]
fn largest_message_fits() {
    let (mut s, mut d) = negotiated();
    let head = r#"{"execute": "echo", "arguments": {"s": ""#;
    let tail = r#""}}"#;
    let body = "y".repeat(MAX_MESSAGE - head.len() - tail.len());
    let r = ask(&mut s, &mut d, &format!("{head}{body}{tail}"));
    assert_eq!(r["return"]["s"].as_str().map(str::len), Some(body.len()));
    let r = ask(&mut s, &mut d, &format!("{head}{body}y{tail}"));
    assert_eq!(r, generic("JSON token size limit exceeded"));
}

#[test]
fn peer_that_never_reads_gets_back_pressure() {
    let (mut s, mut d) = negotiated();
    let mut input = Vec::new();
    for i in 0..20_000 {
        input
            .extend_from_slice(format!(r#"{{"execute": "query-commands", "id": {i}}}"#).as_bytes());
    }
    let taken = s.handle_input(&input, &mut d);
    assert!(taken < input.len());
    assert!(!s.wants_input());
    assert!(s.poll_output().len() >= MAX_OUTPUT);
    assert!(s.poll_output().len() <= MAX_PENDING);
    // Offering the rest again takes nothing until the peer reads.
    assert_eq!(s.handle_input(&input[taken..], &mut d), 0);
    // Then everything is answered, in order.
    let mut rest = &input[taken..];
    let mut replies = drain(&mut s);
    while !rest.is_empty() {
        let n = s.handle_input(rest, &mut d);
        rest = &rest[n..];
        assert!(s.poll_output().len() <= MAX_PENDING);
        replies.extend(drain(&mut s));
    }
    let ids: Vec<u64> = replies.iter().map(|r| r["id"].as_u64().unwrap()).collect();
    assert_eq!(ids, (0..20_000).collect::<Vec<_>>());
}

#[test]
fn oversized_reply_becomes_an_error() {
    let (mut s, mut d) = negotiated();
    let r = ask(&mut s, &mut d, r#"{"execute": "huge", "id": "h"}"#);
    assert_eq!(
        r,
        with_id(generic("The reply is too large to send"), json!("h"))
    );
}

#[test]
fn events_only_after_negotiation() {
    let (mut s, mut d) = fresh();
    assert!(!s.push_event("SHUTDOWN", None, 1));
    assert!(drain(&mut s).is_empty());
    ask(&mut s, &mut d, r#"{"execute": "qmp_capabilities"}"#);
    assert!(s.push_event(
        "BLOCK_IO_ERROR",
        Some(json!({ "device": "d0" })),
        1_267_041_653_715_284
    ));
    assert!(s.push_event("SHUTDOWN", None, 999_999));
    let ev = drain(&mut s);
    let want = [
        json!({
            "event": "BLOCK_IO_ERROR",
            "data": { "device": "d0" },
            "timestamp": { "seconds": 1_267_041_653u64, "microseconds": 715_284 },
        }),
        json!({ "event": "SHUTDOWN", "timestamp": { "seconds": 0, "microseconds": 999_999 } }),
    ];
    assert_eq!(ev, want);
}

#[test]
fn events_to_a_peer_that_never_reads_stall_the_session() {
    let (mut s, _d) = negotiated();
    let mut sent = 0;
    while s.push_event(
        "JOB_STATUS_CHANGE",
        Some(json!({ "id": "job0", "status": "running" })),
        sent,
    ) {
        sent += 1;
        assert!(s.poll_output().len() <= MAX_PENDING);
    }
    assert!(s.is_stalled());
    assert!(!s.wants_input());
    assert!(sent > 1000);
    let mut d = Fake::default();
    assert_eq!(s.handle_input(br#"{"execute": "echo"}"#, &mut d), 0);
    assert!(!s.push_event("SHUTDOWN", None, 0));
}

#[test]
fn draining_releases_memory_and_partial_consume_works() {
    let (mut s, mut d) = negotiated();
    s.handle_input(
        br#"{"execute": "echo", "id": 1}{"execute": "echo", "id": 2}"#,
        &mut d,
    );
    let all = s.poll_output().to_vec();
    s.consume_output(5);
    assert_eq!(s.poll_output(), &all[5..]);
    s.consume_output(usize::MAX);
    assert!(s.poll_output().is_empty());
}
