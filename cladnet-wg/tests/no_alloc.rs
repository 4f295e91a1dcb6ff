//! The transport path (encapsulate and decapsulate of data on an established session) does not
//! allocate. Checked with a counting global allocator; this binary holds a single test so that no
//! other thread allocates meanwhile.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use cladnet_wg::Action;
use common::{Net, ipv4_packet};

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: delegates every call unchanged to the system allocator.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn transport_path_does_not_allocate() {
    let mut net = Net::new();
    net.establish();
    let packet = ipv4_packet([10, 0, 0, 1], [10, 0, 0, 2], &[0x5a; 1000]);
    let (mut wire, mut inner) = ([0_u8; 2048], [0_u8; 2048]);
    let src = common::addr_a();
    // Warm up (first packets may arm timers; events queue may grow once).
    for _ in 0..4 {
        let Action::WriteToNetwork { datagram, .. } = net
            .a
            .device
            .encapsulate(net.now, net.a.peer, &packet, &mut wire)
        else {
            panic!()
        };
        let _ = net.b.device.decapsulate(net.now, src, datagram, &mut inner);
    }
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    for _ in 0..1000 {
        let Action::WriteToNetwork { datagram, .. } = net
            .a
            .device
            .encapsulate(net.now, net.a.peer, &packet, &mut wire)
        else {
            panic!()
        };
        let (_, action) = net.b.device.decapsulate(net.now, src, datagram, &mut inner);
        assert!(matches!(action, Action::WriteToTunnel { .. }));
    }
    assert_eq!(ALLOCATIONS.load(Ordering::Relaxed) - before, 0);
}
