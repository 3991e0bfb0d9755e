//! The DMA arbiter with three clients issuing random reads and writes at random times against a
//! port with random latency: every request is served exactly once, in the memory order of the
//! port, each response reaches its own client, and no waiting client sees more than two other
//! grants before its own (round-robin).

use amf_verilator::dma_arb::{DmaArb, Io};
use rand::{rngs::SmallRng, Rng, SeedableRng};
use std::collections::VecDeque;

#[derive(Clone, Copy, Debug)]
struct Req {
    write: bool,
    addr: u64,
    data: [u32; 8],
}

#[test]
fn arbiter_serves_everyone_once_and_fairly() {
    let mut rng = SmallRng::seed_from_u64(61);
    let mut arb = DmaArb::new();
    let mut io = Io { rst_n: 1, ..Io::default() };
    // Reference memory of 64 words of 32 bytes; the port serves requests in grant order.
    let mut mem = vec![[0u32; 8]; 64];
    let mut queues: Vec<VecDeque<Req>> = (0..3)
        .map(|_| {
            (0..400)
                .map(|_| Req {
                    write: rng.gen_bool(0.5),
                    addr: rng.gen_range(0..64) * 32,
                    data: std::array::from_fn(|_| rng.gen()),
                })
                .collect()
        })
        .collect();
    let mut served = [0usize; 3];
    let mut waiting_grants = [0usize; 3];
    // valid/ready: a request once presented stays until the port takes it.
    let mut presented = [false; 3];
    let mut port: Option<(usize, Req, u32)> = None; // client, request, cycles until the response
    let mut expected_read: Option<(usize, [u32; 8])> = None;
    for _cycle in 0..200_000 {
        if queues.iter().all(|q| q.is_empty()) && port.is_none() {
            break;
        }
        // Clients present their head request (sometimes pausing).
        io.req_valid = 0;
        io.req_write = 0;
        for c in 0..3 {
            if let Some(r) = queues[c].front() {
                if presented[c] || rng.gen_bool(0.3) {
                    presented[c] = true;
                    io.req_valid |= 1 << c;
                    io.req_write |= (r.write as u8) << c;
                    io.req_addr[c] = r.addr;
                    io.req_bytes[c] = 32;
                    io.req_wdata[c] = r.data;
                }
            }
        }
        io.dma_req_ready = (port.is_none() && rng.gen_bool(0.7)) as u8;
        io.dma_rsp_valid = 0;
        if let Some((c, r, left)) = port {
            if left == 0 {
                io.dma_rsp_valid = 1;
                io.dma_rsp_error = 0;
                io.dma_rsp_rdata = if r.write { [0; 8] } else { mem[(r.addr / 32) as usize] };
                if !r.write {
                    expected_read = Some((c, io.dma_rsp_rdata));
                }
            }
        }
        let before = io;
        arb.cycle(&mut io);
        // The port took a request: the request must be a current client head.
        if before.dma_req_ready == 1 && io.dma_req_valid == 1 {
            let c = (0..3)
                .find(|&c| io.req_ready & (1 << c) != 0)
                .expect("the port took a request that no client was told about");
            let r = queues[c].pop_front().expect("grant to an idle client");
            assert_eq!(
                (io.dma_req_write == 1, io.dma_req_addr, io.dma_req_wdata),
                (r.write, r.addr, if r.write { r.data } else { io.dma_req_wdata }),
                "client {c}'s request on the port"
            );
            if r.write {
                mem[(r.addr / 32) as usize] = r.data;
            }
            for (o, w) in waiting_grants.iter_mut().enumerate() {
                if o != c && before.req_valid & (1 << o) != 0 {
                    *w += 1;
                    assert!(*w <= 2, "client {o} passed over {w} times");
                }
            }
            waiting_grants[c] = 0;
            presented[c] = false;
            port = Some((c, r, rng.gen_range(0..4)));
        } else if let Some((c, r, left)) = port {
            if before.dma_rsp_valid == 1 {
                assert_eq!(io.rsp_valid, 1 << c, "response to its own client");
                if let Some((rc, data)) = expected_read.take() {
                    assert_eq!((rc, io.rsp_rdata), (c, data));
                }
                served[c] += 1;
                port = None;
            } else {
                port = Some((c, r, left.saturating_sub(1)));
            }
        }
    }
    assert_eq!(served, [400, 400, 400], "every request served once");
}
