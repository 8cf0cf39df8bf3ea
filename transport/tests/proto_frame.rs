//! Link framing: whatever the writer queues arrives intact and in order,
//! however TCP and TLS split the stream; the first writes and every short
//! write are padded, so no write size repeats; and no input panics the
//! reader.

use bytes::Bytes;
use proptest::prelude::*;
use rand_core::{RngCore, impls};
use umbra_transport::proto::frame::{
    CELL_LEN, DECODER_BUFFER_MAX_LEN, FRAME_HEADER_LEN, FRAME_WIRE_MAX_LEN, Frame, FrameDecoder,
    FrameEncoder, FrameError, FrameType, LINK_KEEPALIVE_MAX, LINK_KEEPALIVE_MIN,
    PADDED_FLUSH_BELOW_LEN, PADDED_FLUSHES_MAX, PADDED_FLUSHES_MIN, PADDING_PAYLOAD_MAX_LEN,
    keepalive_interval,
};

/// A seeded RNG (SplitMix64), so a failing case reproduces.
struct TestRng(u64);

impl RngCore for TestRng {
    fn next_u32(&mut self) -> u32 {
        (self.next_u64() >> 32) as u32
    }
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        impls::fill_bytes_via_next(self, dest)
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

/// Frames the routing core and link control would send.
fn frame() -> impl Strategy<Value = Frame> {
    let opaque = || proptest::collection::vec(any::<u8>(), 0..3000).prop_map(Bytes::from);
    prop_oneof![
        any::<u8>().prop_map(|b| Frame::Cell(Bytes::from(vec![b; CELL_LEN]))),
        opaque().prop_map(Frame::LinkControl),
        opaque().prop_map(Frame::GraphRecord),
        opaque().prop_map(Frame::Ledger),
        opaque().prop_map(Frame::Relay),
        Just(Frame::Keepalive),
        any::<[u8; 8]>().prop_map(Frame::Ping),
        any::<[u8; 8]>().prop_map(Frame::Pong),
    ]
}

/// Feeds `stream` to a decoder in pieces of the given sizes, popping frames
/// after each push as a reader does.
fn decode_in_pieces(stream: &[u8], pieces: &[usize]) -> (Vec<Frame>, FrameDecoder) {
    let mut dec = FrameDecoder::new();
    let mut frames = Vec::new();
    let mut rest = stream;
    let mut sizes = pieces.iter().cycle();
    while !rest.is_empty() {
        let n = sizes.next().copied().unwrap_or(1).clamp(1, rest.len());
        let (head, tail) = rest.split_at(n);
        dec.push(head).expect("decoder has room");
        rest = tail;
        while let Some(f) = dec.next_frame().expect("valid stream") {
            frames.push(f);
        }
    }
    (frames, dec)
}

proptest! {
    #[test]
    fn frames_arrive_intact_however_the_stream_is_split(
        frames in proptest::collection::vec(frame(), 0..40),
        flush_sizes in proptest::collection::vec(1usize..20_000, 1..8),
        pieces in proptest::collection::vec(1usize..5000, 1..8),
        seed in any::<u64>(),
    ) {
        let mut rng = TestRng(seed);
        let mut enc = FrameEncoder::new(&mut rng);
        let mut stream = Vec::new();
        let mut sizes = flush_sizes.iter().cycle();
        // Interleave queueing and flushing, as a busy link does.
        for f in &frames {
            enc.queue(f.frame_type(), f.payload()).expect("valid frame");
            if let Some(&max) = sizes.next()
                && let Some(buf) = enc.flush(max, &mut rng)
            {
                prop_assert!(buf.len() <= max);
                stream.extend_from_slice(&buf);
            }
        }
        while let Some(buf) = enc.flush(*sizes.next().unwrap_or(&1000), &mut rng) {
            stream.extend_from_slice(&buf);
        }
        prop_assert_eq!(enc.pending_len(), 0);
        let (got, dec) = decode_in_pieces(&stream, &pieces);
        prop_assert_eq!(got, frames);
        prop_assert_eq!(dec.buffered_len(), 0);
        prop_assert_eq!(dec.unknown_frames(), 0);
    }

    #[test]
    fn unknown_frame_types_are_skipped_and_counted(
        unknown in proptest::collection::vec(
            (0x09u8..=0xFF, proptest::collection::vec(any::<u8>(), 0..500)), 0..10),
        pieces in proptest::collection::vec(1usize..700, 1..6),
    ) {
        let mut stream = Vec::new();
        for (ty, payload) in &unknown {
            stream.extend_from_slice(&u16::try_from(payload.len() + 1).expect("small").to_be_bytes());
            stream.push(*ty);
            stream.extend_from_slice(payload);
        }
        let mut enc = FrameEncoder::with_padded_flushes(0);
        enc.queue(FrameType::LinkControl, b"after").expect("queue");
        let tail = enc.flush(usize::MAX, &mut TestRng(1)).expect("queued");
        stream.extend_from_slice(&tail);

        let (got, dec) = decode_in_pieces(&stream, &pieces);
        prop_assert_eq!(got, vec![Frame::LinkControl(Bytes::from_static(b"after"))]);
        prop_assert_eq!(dec.unknown_frames(), unknown.len() as u64);
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_decoder(
        data in proptest::collection::vec(any::<u8>(), 0..10_000),
        pieces in proptest::collection::vec(1usize..3000, 1..6),
    ) {
        let mut dec = FrameDecoder::new();
        let mut rest = data.as_slice();
        let mut sizes = pieces.iter().cycle();
        'feed: while !rest.is_empty() {
            let n = sizes.next().copied().unwrap_or(1).clamp(1, rest.len());
            let (head, tail) = rest.split_at(n);
            rest = tail;
            if dec.push(head).is_err() {
                break;
            }
            loop {
                match dec.next_frame() {
                    Ok(Some(f)) => {
                        if let Frame::Cell(c) = &f {
                            prop_assert_eq!(c.len(), CELL_LEN);
                        }
                    }
                    Ok(None) => break,
                    Err(_) => break 'feed,
                }
            }
            prop_assert!(dec.buffered_len() <= DECODER_BUFFER_MAX_LEN);
        }
    }

    #[test]
    fn keepalive_intervals_stay_in_range(seed in any::<u64>()) {
        let d = keepalive_interval(&mut TestRng(seed));
        prop_assert!(d >= LINK_KEEPALIVE_MIN && d <= LINK_KEEPALIVE_MAX, "{d:?}");
    }
}

#[test]
fn the_first_writes_of_a_link_carry_padding_of_varying_size() {
    let mut rng = TestRng(42);
    let mut enc = FrameEncoder::new(&mut rng);
    let padded = enc.padded_flushes_left();
    assert!((PADDED_FLUSHES_MIN..=PADDED_FLUSHES_MAX).contains(&padded));

    let cell_write = FRAME_HEADER_LEN + CELL_LEN;
    let mut sizes = Vec::new();
    for _ in 0..padded + 3 {
        enc.queue(FrameType::Cell, &[0x55; CELL_LEN])
            .expect("queue");
        sizes.push(enc.flush(16_384, &mut rng).expect("queued").len());
    }
    let (first, rest) = sizes.split_at(padded as usize);
    // Early flushes start with padding and later short ones end with it;
    // either way one padding frame of 0–255 bytes rides along.
    let padded_range =
        cell_write + FRAME_HEADER_LEN..=cell_write + FRAME_HEADER_LEN + PADDING_PAYLOAD_MAX_LEN;
    for &s in first.iter().chain(rest) {
        assert!(
            padded_range.contains(&s),
            "padded write of {s} bytes; sizes {sizes:?}"
        );
    }
    let distinct: std::collections::BTreeSet<_> = first.iter().collect();
    assert!(distinct.len() > 1, "padded writes all {first:?}");
}

/// Counts how often each value occurs and returns the most frequent one
/// with its count.
fn most_common(values: &[usize]) -> (usize, usize) {
    let mut counts = std::collections::BTreeMap::new();
    for &v in values {
        *counts.entry(v).or_insert(0usize) += 1;
    }
    counts
        .into_iter()
        .max_by_key(|&(_, n)| n)
        .unwrap_or_default()
}

#[test]
fn lone_cells_long_after_the_start_give_no_repeating_write_size() {
    // A quiet link: one cell per writer wakeup, for 5000 wakeups, with
    // the link writer's random 2–16 KiB write limit.
    let mut rng = TestRng(11);
    let mut enc = FrameEncoder::new(&mut rng);
    let mut sizes = Vec::new();
    for _ in 0..5000 {
        enc.queue(FrameType::Cell, &[0x33; CELL_LEN])
            .expect("queue");
        let max = 2048 + (rng.next_u32() as usize % (16_384 - 2048 + 1));
        sizes.push(enc.flush(max, &mut rng).expect("queued").len());
        assert_eq!(enc.pending_len(), 0);
    }
    let (size, count) = most_common(&sizes);
    let distinct: std::collections::BTreeSet<_> = sizes.iter().collect();
    // 256 padding lengths, uniform: each about 0.4 % of writes.
    assert!(
        count * 100 < sizes.len(),
        "{size}-byte writes are {count} of {}: more than 1 %",
        sizes.len()
    );
    assert!(distinct.len() >= 250, "only {} sizes", distinct.len());
    assert!(!sizes.contains(&(FRAME_HEADER_LEN + CELL_LEN)));
    // What the padding costs on this worst case, for the record.
    let mean = sizes.iter().sum::<usize>() as f64 / sizes.len() as f64;
    let bare = (FRAME_HEADER_LEN + CELL_LEN) as f64;
    eprintln!(
        "lone cells: mean write {mean:.1} bytes vs {bare} unpadded ({:.1} % more), \
         most common size {size} × {count} of {}",
        (mean / bare - 1.0) * 100.0,
        sizes.len()
    );
}

#[test]
fn bursts_of_a_few_cells_give_no_repeating_write_size() {
    // k cells per wakeup, drained as the link writer drains them: every
    // write size must spread, whatever k is.
    for k in [1usize, 2, 3, 5, 8, 13, 20] {
        let mut rng = TestRng(k as u64);
        let mut enc = FrameEncoder::new(&mut rng);
        let mut sizes = Vec::new();
        for _ in 0..2000 {
            for _ in 0..k {
                enc.queue(FrameType::Cell, &[0x44; CELL_LEN])
                    .expect("queue");
            }
            loop {
                let max = 2048 + (rng.next_u32() as usize % (16_384 - 2048 + 1));
                match enc.flush(max, &mut rng) {
                    Some(b) => sizes.push(b.len()),
                    None => break,
                }
            }
        }
        let (size, count) = most_common(&sizes);
        assert!(
            count * 50 < sizes.len(),
            "{k} cells per wakeup: {size}-byte writes are {count} of {}",
            sizes.len()
        );
    }
}

#[test]
fn keepalive_only_writes_vary_in_size_too() {
    let mut rng = TestRng(5);
    let mut enc = FrameEncoder::new(&mut rng);
    let sizes: Vec<usize> = (0..1000)
        .map(|_| {
            enc.queue(FrameType::Keepalive, &[]).expect("queue");
            enc.flush(16_384, &mut rng).expect("queued").len()
        })
        .collect();
    let (size, count) = most_common(&sizes);
    assert!(count < 20, "{size}-byte keepalive writes × {count}");
}

#[test]
fn big_writes_are_not_padded_and_padding_never_exceeds_the_limit() {
    let mut rng = TestRng(8);
    let mut enc = FrameEncoder::new(&mut rng);
    // Past the early padded flushes.
    while enc.padded_flushes_left() > 0 {
        enc.queue(FrameType::Keepalive, &[]).expect("queue");
        enc.flush(16_384, &mut rng).expect("queued");
    }
    let big = vec![0xAB; PADDED_FLUSH_BELOW_LEN];
    enc.queue(FrameType::GraphRecord, &big).expect("queue");
    let buf = enc.flush(usize::MAX, &mut rng).expect("queued");
    assert_eq!(buf.len(), FRAME_HEADER_LEN + big.len(), "no padding");
    // A limit that leaves no room for a padding header: nothing added.
    enc.queue(FrameType::Cell, &[1; CELL_LEN]).expect("queue");
    let buf = enc
        .flush(FRAME_HEADER_LEN + CELL_LEN + 2, &mut rng)
        .expect("queued");
    assert_eq!(buf.len(), FRAME_HEADER_LEN + CELL_LEN);
    // A limit with room for a short padding frame only.
    enc.queue(FrameType::Cell, &[1; CELL_LEN]).expect("queue");
    let limit = FRAME_HEADER_LEN + CELL_LEN + FRAME_HEADER_LEN + 4;
    let buf = enc.flush(limit, &mut rng).expect("queued");
    assert!(buf.len() <= limit);
    let mut dec = FrameDecoder::new();
    dec.push(&buf).expect("push");
    assert_eq!(
        dec.next_frame().expect("valid"),
        Some(Frame::Cell(Bytes::from(vec![1; CELL_LEN])))
    );
    assert_eq!(dec.next_frame().expect("valid"), None);
    assert_eq!(dec.buffered_len(), 0);
}

#[test]
fn padding_counts_are_drawn_from_4_to_16() {
    let mut seen = std::collections::BTreeSet::new();
    let mut rng = TestRng(7);
    for _ in 0..2000 {
        seen.insert(FrameEncoder::new(&mut rng).padded_flushes_left());
    }
    assert_eq!(
        seen,
        (PADDED_FLUSHES_MIN..=PADDED_FLUSHES_MAX).collect(),
        "every count from 4 to 16 and nothing else"
    );
}

#[test]
fn keepalive_intervals_are_jittered_across_the_range() {
    let mut rng = TestRng(3);
    let draws: Vec<_> = (0..1000).map(|_| keepalive_interval(&mut rng)).collect();
    let lo = draws.iter().min().copied().unwrap_or_default();
    let hi = draws.iter().max().copied().unwrap_or_default();
    assert!(
        lo < LINK_KEEPALIVE_MIN + std::time::Duration::from_secs(1),
        "{lo:?}"
    );
    assert!(
        hi > LINK_KEEPALIVE_MAX - std::time::Duration::from_secs(1),
        "{hi:?}"
    );
}

#[test]
fn protocol_violations_are_errors_not_panics() {
    let mut dec = FrameDecoder::new();
    dec.push(&[0, 0, 1]).expect("push");
    assert_eq!(dec.next_frame(), Err(FrameError::EmptyFrame));

    let mut dec = FrameDecoder::new();
    dec.push(&[0, 4, FrameType::Cell.to_byte(), 1, 2, 3])
        .expect("push");
    assert_eq!(dec.next_frame(), Err(FrameError::BadCellLength(3)));

    let mut dec = FrameDecoder::new();
    dec.push(&[0, 2, FrameType::Keepalive.to_byte(), 9])
        .expect("push");
    assert_eq!(dec.next_frame(), Err(FrameError::KeepaliveNotEmpty(1)));

    let mut enc = FrameEncoder::with_padded_flushes(0);
    assert_eq!(
        enc.queue(FrameType::Cell, &[0; 100]),
        Err(FrameError::BadCellLength(100))
    );
    assert_eq!(
        enc.queue(FrameType::LinkControl, &vec![0; 70_000]),
        Err(FrameError::PayloadTooLong(70_000))
    );
    assert_eq!(enc.pending_len(), 0);
}

#[test]
fn the_largest_frame_round_trips_and_the_buffer_is_bounded() {
    let big = vec![0xEE; FRAME_WIRE_MAX_LEN - FRAME_HEADER_LEN];
    let mut enc = FrameEncoder::with_padded_flushes(0);
    enc.queue(FrameType::GraphRecord, &big).expect("queue");
    let buf = enc.flush(usize::MAX, &mut TestRng(0)).expect("queued");
    assert_eq!(buf.len(), FRAME_WIRE_MAX_LEN);

    let mut dec = FrameDecoder::new();
    dec.push(&buf[..FRAME_WIRE_MAX_LEN - 1]).expect("push");
    dec.push(&buf[..FRAME_WIRE_MAX_LEN])
        .expect("one max frame more fits");
    assert_eq!(dec.push(&[0; 3]), Err(FrameError::BufferFull));
    assert_eq!(dec.buffered_len(), DECODER_BUFFER_MAX_LEN - 1);
}

#[test]
fn nothing_queued_means_nothing_to_write() {
    let mut rng = TestRng(9);
    let mut enc = FrameEncoder::new(&mut rng);
    assert_eq!(enc.flush(16_384, &mut rng), None);
    enc.queue(FrameType::Keepalive, &[]).expect("queue");
    assert_eq!(enc.flush(0, &mut rng), None);
    assert!(enc.flush(16_384, &mut rng).is_some());
}
