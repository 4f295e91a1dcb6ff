//! Running the programs on given bytes through `BPF_PROG_TEST_RUN`, without attaching them:
//! the packet-table tests (`cladnet-agent/tests/ebpf_programs.rs`) drive the real programs and
//! maps this way.
//!
//! The kernel hands TC programs an Ethernet frame in a test run, while on the TUN device the
//! transmit program sees a bare IPv4 packet; [`ProgramTester::load`] therefore sets
//! [`Config::FLAG_OVERLAY_ETH`], which skips only the placeholder Ethernet push (that step is
//! covered by the namespace traffic test).

use aya::{
    Ebpf,
    programs::{SchedClassifier, TestRun as _, TestRunOptions, Xdp},
};
use cladnet_common::maps::{
    Config, DEFAULT_MAX_PEERS, PROG_TC_OVERLAY_EGRESS, PROG_TC_UNDERLAY_INGRESS, PROG_XDP_UNDERLAY,
};

use super::{
    EbpfError, KernelDataplane,
    dataplane::{check_max_peers, load_object, program},
    tables::Tables,
};

/// One of the programs.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum Hook {
    /// `cladnet_xdp_underlay`.
    XdpUnderlay,
    /// `cladnet_tc_underlay_ingress`.
    TcUnderlayIngress,
    /// `cladnet_tc_overlay_egress`.
    TcOverlayEgress,
}

impl Hook {
    const fn program(self) -> &'static str {
        match self {
            Self::XdpUnderlay => PROG_XDP_UNDERLAY,
            Self::TcUnderlayIngress => PROG_TC_UNDERLAY_INGRESS,
            Self::TcOverlayEgress => PROG_TC_OVERLAY_EGRESS,
        }
    }
}

/// What a test run returned.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct RunResult {
    /// The program's return value (XDP action or TC verdict).
    pub verdict: u32,
    /// The packet as the program left it.
    pub data: Vec<u8>,
}

/// The programs loaded (verified) but not attached, and their maps (not pinned).
pub struct ProgramTester {
    ebpf: Ebpf,
    dataplane: KernelDataplane,
}

impl ProgramTester {
    /// Loads every program with `config` (plus [`Config::FLAG_OVERLAY_ETH`]) in place, the
    /// maps sized for [`DEFAULT_MAX_PEERS`] peers.
    pub fn load(config: Config) -> Result<Self, EbpfError> {
        Self::load_sized(config, DEFAULT_MAX_PEERS)
    }

    /// [`ProgramTester::load`] with the maps sized for `max_peers` peers, as the agent's
    /// `ebpf_max_peers` setting does.
    pub fn load_sized(config: Config, max_peers: u32) -> Result<Self, EbpfError> {
        check_max_peers(max_peers)?;
        let mut ebpf = load_object(None, max_peers)?;
        for hook in [Hook::TcUnderlayIngress, Hook::TcOverlayEgress] {
            let name = hook.program();
            let prog: &mut SchedClassifier = program(&mut ebpf, name)?;
            prog.load()
                .map_err(|e| EbpfError::program("load", name, "", e))?;
        }
        let prog: &mut Xdp = program(&mut ebpf, PROG_XDP_UNDERLAY)?;
        prog.load()
            .map_err(|e| EbpfError::program("load", PROG_XDP_UNDERLAY, "", e))?;
        let mut dataplane = KernelDataplane::unpinned(Tables::take(&mut ebpf, max_peers)?);
        dataplane.update_config(|c| {
            *c = config;
            c.flags |= Config::FLAG_OVERLAY_ETH;
        })?;
        Ok(Self { ebpf, dataplane })
    }

    /// The maps, through the same API the agent uses.
    pub fn dataplane(&mut self) -> &mut KernelDataplane {
        &mut self.dataplane
    }

    /// Runs `hook` once on `input` (an Ethernet frame, for every hook).
    pub fn run(&self, hook: Hook, input: &[u8]) -> Result<RunResult, EbpfError> {
        let name = hook.program();
        let prog = self.ebpf.program(name).ok_or(EbpfError::MissingItem {
            kind: "program",
            name,
        })?;
        let mut out = vec![0u8; input.len() + 256];
        let opts = TestRunOptions {
            data_in: Some(input),
            data_out: Some(&mut out),
            ..TestRunOptions::default()
        };
        let result = match hook {
            Hook::XdpUnderlay => {
                let xdp: &Xdp = prog
                    .try_into()
                    .map_err(|e| EbpfError::program("convert", name, "", e))?;
                xdp.test_run(opts)
            }
            Hook::TcUnderlayIngress | Hook::TcOverlayEgress => {
                let tc: &SchedClassifier = prog
                    .try_into()
                    .map_err(|e| EbpfError::program("convert", name, "", e))?;
                tc.test_run(opts)
            }
        }
        .map_err(|e| EbpfError::program("BPF_PROG_TEST_RUN", name, "", e))?;
        out.truncate(result.data_size_out as usize);
        Ok(RunResult {
            verdict: result.return_value,
            data: out,
        })
    }
}
