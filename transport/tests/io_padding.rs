//! Link padding over real TLS and HTTP/2 on loopback: a side with a padding
//! rate sends cell-sized padding at that rate, the peer counts and discards
//! it (the daemon never sees a padding frame), cells top the rate up rather
//! than add to it, and rate 0 stops it.

#![allow(clippy::unwrap_used)]

mod io_support;

use std::time::Duration;

use bytes::Bytes;
use io_support::*;
use umbra_transport::io::{LinkSettings, PaddingStats};
use umbra_transport::proto::frame::{CELL_LEN, Frame};
use umbra_transport::proto::padding::CELL_FRAME_WIRE_LEN;

/// 64 KiB/s: a padding frame every 18.4 ms.
const RATE: u32 = 64 * 1024;

fn frames_per_sec(rate: u32) -> f64 {
    f64::from(rate) / CELL_FRAME_WIRE_LEN as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn padding_runs_at_the_set_rate_and_never_reaches_the_receiver() {
    let mut l = start_listener(built_in_cover(), accept_all(b""), LinkSettings::default()).await;
    let (out, mut inb) = link_pair(&mut l).await;
    assert_eq!(out.sender.padding(), PaddingStats::default());

    // The dialer pads; nothing else is sent.
    out.sender.set_padding(RATE);
    let window = Duration::from_secs(2);
    let before = (out.sender.padding(), inb.sender.padding());
    let quiet = tokio::time::timeout(window, inb.receiver.recv()).await;
    assert!(
        quiet.is_err(),
        "padding reached the receiver's daemon side: {quiet:?}"
    );
    let after = (out.sender.padding(), inb.sender.padding());
    let sent = after.0.frames_out - before.0.frames_out;
    let received = after.1.frames_in - before.1.frames_in;
    let want = frames_per_sec(RATE) * window.as_secs_f64();
    eprintln!(
        "padding at {RATE} B/s for {window:?}: sent {sent}, received {received}, expected {want:.0}"
    );
    assert_eq!(after.0.rate_out, RATE);
    assert!(
        (sent as f64) > 0.8 * want && (sent as f64) < 1.1 * want,
        "sent {sent} padding frames in {window:?}, expected about {want:.0}"
    );
    // The receiver has counted what arrived (all but those in flight).
    assert!(
        received + 3 >= sent && received <= after.0.frames_out + 2,
        "received {received} of {sent}"
    );
    // The listener side was asked for nothing, so it sends none.
    assert_eq!(after.1.frames_out, 0);
    assert_eq!(after.0.frames_in, 0);

    // Cells at twice the rate leave no room for padding; they all arrive.
    let cells = (2.0 * frames_per_sec(RATE)) as u64; // one second's worth
    let sender = out.sender.clone();
    let start = out.sender.padding().frames_out;
    let send = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1) / cells as u32);
        for _ in 0..cells {
            tick.tick().await;
            sender
                .send(Frame::Cell(Bytes::from(vec![7u8; CELL_LEN])))
                .await
                .unwrap();
        }
    });
    for i in 0..cells {
        let got = tokio::time::timeout(STEP, inb.receiver.recv())
            .await
            .unwrap_or_else(|_| panic!("cell {i} of {cells} did not arrive"))
            .unwrap();
        assert!(matches!(got, Frame::Cell(_)), "{got:?}");
    }
    send.await.unwrap();
    let during = out.sender.padding().frames_out - start;
    eprintln!("padding frames while cells ran at twice the rate: {during}");
    assert!(
        during <= 3,
        "{during} padding frames went out while cells filled every slot"
    );

    // Rate 0 stops padding.
    out.sender.set_padding(0);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let stopped = out.sender.padding().frames_out;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(out.sender.padding().frames_out, stopped);
    assert_eq!(out.sender.padding().rate_out, 0);
}
