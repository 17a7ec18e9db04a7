//! Guest RAM that the VM runs without for its first milliseconds: vmm starts the guest while it
//! still reads the initrd into guest memory, and keeps that range out of KVM's memory map until
//! the initrd is there (`Vm::map_memory`, `initrd::PendingInitrd`). The kernel reaches for its
//! initrd long after it starts, so normally the range is mapped well before. Should the guest get
//! there first, its access exits to vmm as MMIO, and `HeldBackRam`, on the MMIO bus over that
//! range, waits for the contents and then serves the access from guest memory: a read sees the
//! initrd, and a write lands on top of it, never under it.

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::kvm::bus::BusDevice;
use crate::kvm::exit::{ExitReason, VmExit};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// vmm is still writing the contents; `touched` once the guest has tried to use them.
    Filling {
        touched: bool,
    },
    Ready,
    Failed,
}

/// Whether the held-back RAM has its contents yet: set once by the thread filling it, waited
/// for by vCPUs that reach the range early.
#[derive(Debug)]
pub struct Filling {
    state: Mutex<State>,
    changed: Condvar,
}

impl Filling {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State::Filling { touched: false }),
            changed: Condvar::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The contents are in place (`ok`) or will never be: wakes every waiting vCPU.
    pub fn finish(&self, ok: bool) {
        *self.lock() = if ok { State::Ready } else { State::Failed };
        self.changed.notify_all();
    }

    /// Marks the range as touched by the guest and waits for the filling to end; true when the
    /// contents are there.
    fn touch_and_wait(&self) -> bool {
        let mut state = self.lock();
        if let State::Filling { touched } = &mut *state {
            *touched = true;
            self.changed.notify_all();
        }
        let state = self
            .changed
            .wait_while(state, |state| matches!(state, State::Filling { .. }))
            .unwrap_or_else(|e| e.into_inner());
        *state == State::Ready
    }

    /// Waits until the guest has reached the range before it was filled, for at most `limit`;
    /// false if it did not. Only for the test hook that makes vmm fill the range late
    /// (`VMM_TEST_LATE_INITRD`), which proves the waiting path on a real guest.
    pub fn wait_until_touched(&self, limit: Duration) -> bool {
        let state = self.lock();
        let (state, _) = self
            .changed
            .wait_timeout_while(state, limit, |state| {
                matches!(state, State::Filling { touched: false })
            })
            .unwrap_or_else(|e| e.into_inner());
        !matches!(*state, State::Filling { touched: false })
    }
}

/// The MMIO bus device over the held-back range: each access waits for the contents, then reads
/// or writes guest memory there. Once KVM maps the range, no access comes here any more.
pub struct HeldBackRam {
    base: u64,
    memory: GuestMemoryMmap,
    filling: Arc<Filling>,
    exit: Arc<VmExit>,
    /// Whether the wait was logged (once).
    reported: bool,
}

impl HeldBackRam {
    pub fn new(
        base: u64,
        memory: GuestMemoryMmap,
        filling: Arc<Filling>,
        exit: Arc<VmExit>,
    ) -> Self {
        Self {
            base,
            memory,
            filling,
            exit,
            reported: false,
        }
    }

    /// Waits for the contents; on failure stops the VM (the filling thread reports why).
    fn ready(&mut self, addr: u64) -> bool {
        let waiting = Instant::now();
        let ready = self.filling.touch_and_wait();
        if !std::mem::replace(&mut self.reported, true) {
            log::info!(
                "the guest reached {addr:#x} before vmm had filled guest RAM there; \
                 it waited {:.1} ms",
                waiting.elapsed().as_secs_f64() * 1e3
            );
        }
        if !ready {
            self.exit.request(ExitReason::VcpuError(format!(
                "guest RAM at {addr:#x} could not be filled"
            )));
        }
        ready
    }
}

impl BusDevice for HeldBackRam {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let addr = self.base + offset;
        if !(self.ready(addr) && self.memory.read_slice(data, GuestAddress(addr)).is_ok()) {
            data.fill(0xff);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let addr = self.base + offset;
        if self.ready(addr) {
            // The bus only routes accesses wholly inside the range, which is guest RAM.
            let _ = self.memory.write_slice(data, GuestAddress(addr));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::thread;

    use super::*;

    const BASE: u64 = 0x20_0000;

    fn ram() -> (GuestMemoryMmap, Arc<Filling>, HeldBackRam, Arc<VmExit>) {
        let memory = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
        let filling = Filling::new();
        let exit = Arc::new(VmExit::new().unwrap());
        let device = HeldBackRam::new(BASE, memory.clone(), filling.clone(), exit.clone());
        (memory, filling, device, exit)
    }

    /// Fills 8 bytes at BASE + 16 on another thread once the guest has touched the range.
    fn fill_when_touched(
        memory: &GuestMemoryMmap,
        filling: &Arc<Filling>,
        ok: bool,
    ) -> thread::JoinHandle<()> {
        let (memory, filling) = (memory.clone(), filling.clone());
        thread::spawn(move || {
            assert!(filling.wait_until_touched(Duration::from_secs(10)));
            // Give an access that should wait the chance to run ahead if it did not.
            thread::sleep(Duration::from_millis(20));
            memory
                .write_slice(&[0x5a; 8], GuestAddress(BASE + 16))
                .unwrap();
            filling.finish(ok);
        })
    }

    #[test]
    fn an_early_read_waits_for_the_contents() {
        let (memory, filling, mut device, exit) = ram();
        let filler = fill_when_touched(&memory, &filling, true);
        let mut data = [0u8; 4];
        device.read(18, &mut data);
        assert_eq!(data, [0x5a; 4]);
        filler.join().unwrap();
        assert_eq!(exit.reason(), None);
    }

    #[test]
    fn an_early_write_lands_on_top_of_the_contents() {
        let (memory, filling, mut device, _exit) = ram();
        let filler = fill_when_touched(&memory, &filling, true);
        device.write(16, &[1, 2]);
        filler.join().unwrap();
        let mut data = [0u8; 4];
        memory
            .read_slice(&mut data, GuestAddress(BASE + 16))
            .unwrap();
        assert_eq!(data, [1, 2, 0x5a, 0x5a]);
    }

    #[test]
    fn a_failed_filling_stops_the_vm_and_reads_see_all_ones() {
        let (memory, filling, mut device, exit) = ram();
        let filler = fill_when_touched(&memory, &filling, false);
        let mut data = [0u8; 2];
        device.read(16, &mut data);
        assert_eq!(data, [0xff; 2]);
        filler.join().unwrap();
        assert!(matches!(exit.reason(), Some(ExitReason::VcpuError(_))));
    }

    #[test]
    fn waiting_for_a_touch_gives_up_after_its_limit() {
        let (_memory, filling, _device, _exit) = ram();
        assert!(!filling.wait_until_touched(Duration::from_millis(10)));
    }

    #[test]
    fn accesses_after_the_filling_go_straight_through() {
        let (memory, filling, mut device, _exit) = ram();
        filling.finish(true);
        device.write(0, &[9; 3]);
        let mut data = [0u8; 3];
        device.read(0, &mut data);
        assert_eq!(data, [9; 3]);
        memory.read_slice(&mut data, GuestAddress(BASE)).unwrap();
        assert_eq!(data, [9; 3]);
    }
}
