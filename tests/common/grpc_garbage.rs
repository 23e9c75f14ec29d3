//! Malformed traffic for a gRPC server on a unix socket (the snapshotter's and the diff
//! service's): random bytes, HTTP/2 junk frames, and well-framed calls whose messages are
//! garbage or whatever the test passes. Each case has its own connection.
#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;

/// Send malformed traffic to the gRPC server at `sock`: the calls go to `method` (a path
/// like `/containerd.services.diff.v1.Diff/Apply`), one per message of `bodies` after one
/// that is not protobuf.
pub fn garbage_to(sock: &Path, method: &str, bodies: &[Vec<u8>]) {
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let frame = |typ: u8, flags: u8, stream: u32, payload: &[u8]| {
        let mut f = Vec::new();
        f.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
        f.push(typ);
        f.push(flags);
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    };
    // HPACK literal header fields without indexing (no Huffman coding).
    let header = |name: &str, value: &str| {
        let mut h = vec![0x00, name.len() as u8];
        h.extend_from_slice(name.as_bytes());
        h.push(value.len() as u8);
        h.extend_from_slice(value.as_bytes());
        h
    };
    let mut rng = testkit::Rng::new(7);
    let mut cases: Vec<Vec<u8>> = Vec::new();
    for len in [1usize, 24, 100, 5000] {
        cases.push((0..len).map(|_| rng.next_u64() as u8).collect());
    }
    let mut junk = PREFACE.to_vec();
    junk.extend(frame(4, 0, 0, &[]));
    junk.extend(frame(0xee, 0xff, 1, &[1, 2, 3]));
    junk.extend(frame(1, 4, 1, &[0xff; 40]));
    cases.push(junk);
    // A well-formed call to Prepare whose message is not protobuf.
    let mut call = PREFACE.to_vec();
    call.extend(frame(4, 0, 0, &[]));
    let mut hdrs = Vec::new();
    for (k, v) in [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", method),
        (":authority", "localhost"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ] {
        hdrs.extend(header(k, v));
    }
    call.extend(frame(1, 4, 1, &hdrs));
    // A message that is not protobuf, then the caller's messages, each in its own call.
    let mut all = vec![vec![0xffu8; 32]];
    all.extend(bodies.iter().cloned());
    for body in all {
        let mut c = call.clone();
        let mut grpc = vec![0];
        grpc.extend_from_slice(&(body.len() as u32).to_be_bytes());
        grpc.extend_from_slice(&body);
        c.extend(frame(0, 1, 1, &grpc));
        cases.push(c);
    }
    for case in cases {
        let mut s = UnixStream::connect(sock).expect("connect to the snapshotter socket");
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let _ = s.write_all(&case);
        let mut buf = [0u8; 4096];
        let _ = s.read(&mut buf);
    }
}
