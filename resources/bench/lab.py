#!/usr/bin/env python3
"""Runs inside the lab (resources/lab/run-in-lab): our vmm against QEMU's microvm, same kernel,
initramfs, command line, memory and vCPUs, in interleaved repetitions within this one lab boot.

  lab.py boot --reps N --out FILE.json
      Boots the guest with the command `true`, alternating which VMM goes first, after one
      unmeasured boot of each (to warm the outer VM's page cache). Per boot: the
      time from just before the VMM is started to the console line the guest's /init prints on
      reaching userspace ("vmm-init: userspace reached", the same line under both VMMs), and to
      the VMM's exit.
  lab.py hostroot --reps N --out FILE.json
      Our vmm only, same kernel: `vmm -- true` on the project's initramfs against
      `vmm --host-root -- true` (the outer VM's root over virtio-fs, served by virtiofsd),
      alternating which goes first, after one unmeasured boot of each. Per boot: the time to the
      "userspace reached" line (both inits print it) and to vmm's exit after `true` ran.
  lab.py io --reps N --runtime S --write-mib M --out FILE.json
      fio in the guest on a virtio-blk disk backed by the same file under both VMMs (QEMU:
      virtio-blk on virtio-mmio, its -M microvm transport): 4 KiB random reads QD32 for S
      seconds, 128 KiB sequential writes QD16 of M MiB. Our VMM also gets a zoned disk, written
      the same way with fio --zonemode=zbd, and both its disks are then written at QD1 too.

Absolute times in the lab mean nothing (the outer VM is TCG); the ratios are the result.
"""
import argparse
import base64
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
KERNEL = os.path.join(REPO, "build/guest/bzImage")
INITRD = os.path.join(REPO, "build/guest/initramfs.cpio.gz")
VMM = os.path.join(REPO, "target/release/vmm")
MEMORY_MIB = 256
CPUS = 1
# The command line of resources/lab/qemu-guest: the timer parameters keep the nested guest from
# calibrating its TSC against the PIT (docs/guest-interface.md).
CMDLINE = "console=ttyS0 quiet reboot=t panic=-1 lpj=1000000 tsc=reliable no_timer_check"
MARKER = b"vmm-init: userspace reached"
DISK = "/tmp/bench-disk.img"
ZONED = "/tmp/bench-zoned.img"
# Zone size of the zoned disk (the sequential write must cover at least one zone).
ZONE_MIB = 64
DISK_MIB = 256


def cmdline_for(guest_command):
    encoded = base64.b64encode(guest_command.encode()).decode()
    return f"{CMDLINE} vmm.run64={encoded}"


def vmm_command(guest_command, disks=()):
    command = [VMM, "--kernel", KERNEL, "--initrd", INITRD, "--memory", f"{MEMORY_MIB}M",
               "--cpus", str(CPUS), "--cmdline", cmdline_for(guest_command)]
    for kind, spec in disks:
        command += [f"--{kind}", spec]
    return command


def run_mode_command(host_root):
    """`vmm ... -- true`, on the initramfs or on the host's root."""
    command = [VMM, "--kernel", KERNEL, "--memory", f"{MEMORY_MIB}M", "--cpus", str(CPUS),
               "--cmdline", CMDLINE]
    if host_root:
        command.append("--host-root")
    return command + ["--", "true"]


def qemu_command(guest_command, disk=None):
    command = [
        # acpi=off: the guest kernel has no ACPI, and without it QEMU puts the virtio-mmio
        # devices on the kernel command line, as our VMM does.
        "qemu-system-x86_64", "-M", "microvm,acpi=off", "-accel", "kvm", "-cpu", "host",
        "-smp", str(CPUS), "-m", str(MEMORY_MIB), "-nodefaults", "-no-user-config",
        "-display", "none", "-no-reboot", "-serial", "stdio",
        "-device", "isa-debug-exit,iobase=0xf4,iosize=0x01",
        "-kernel", KERNEL, "-initrd", INITRD, "-append", cmdline_for(guest_command),
    ]
    if disk:
        # Page-cache I/O like ours (cache=writeback, QEMU's default), on virtio-mmio.
        command += ["-drive", f"file={disk},if=none,id=disk0,format=raw,cache=writeback",
                    "-device", "virtio-blk-device,drive=disk0"]
    return command


def guest_succeeded(vmm, status):
    # QEMU's isa-debug-exit exits with (status << 1) | 1.
    return status == 0 if vmm == "vmm" else status == 1


def boot(vmm, command):
    """Runs one VM; returns (seconds to the marker, seconds to exit, console output)."""
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    output = b""
    marker_at = None
    while True:
        chunk = os.read(proc.stdout.fileno(), 65536)
        if not chunk:
            break
        output += chunk
        if marker_at is None and MARKER in output:
            marker_at = time.perf_counter() - start
    status = proc.wait()
    exit_at = time.perf_counter() - start
    text = output.decode(errors="replace")
    if marker_at is None or not guest_succeeded(vmm, status):
        sys.exit(f"lab.py: {vmm} failed (status {status}, marker {'seen' if marker_at else 'never seen'}):\n{text[-3000:]}")
    return marker_at, exit_at, text


def run_boot(args):
    # One unmeasured boot each first: the kernel and initramfs come over virtiofs into the outer
    # VM's page cache, and the first reader would pay for that alone.
    for vmm in ("vmm", "qemu"):
        boot(vmm, vmm_command("true") if vmm == "vmm" else qemu_command("true"))
    runs = {"vmm": [], "qemu": []}
    for rep in range(args.reps):
        order = ["vmm", "qemu"] if rep % 2 == 0 else ["qemu", "vmm"]
        for vmm in order:
            command = vmm_command("true") if vmm == "vmm" else qemu_command("true")
            marker, exit_at, _ = boot(vmm, command)
            runs[vmm].append({"userspace_ms": marker * 1e3, "exit_ms": exit_at * 1e3})
        print(f"  boot {rep + 1}/{args.reps}: vmm {runs['vmm'][-1]['userspace_ms']:.0f} ms, "
              f"qemu {runs['qemu'][-1]['userspace_ms']:.0f} ms to userspace", file=sys.stderr)
    return runs


def run_hostroot(args):
    # The lab's outer root is itself virtio-fs; the Rust virtiofsd re-exporting it gives
    # intermittent ESTALE there (tests/tests/host_root.rs), QEMU's C virtiofsd does not.
    os.environ.setdefault("VMM_VIRTIOFSD", "/usr/lib/qemu/virtiofsd")
    modes = {"initramfs": run_mode_command(False), "hostroot": run_mode_command(True)}
    for command in modes.values():
        boot("vmm", command)
    runs = {mode: [] for mode in modes}
    for rep in range(args.reps):
        order = list(modes) if rep % 2 == 0 else list(reversed(list(modes)))
        for mode in order:
            marker, exit_at, _ = boot("vmm", modes[mode])
            runs[mode].append({"userspace_ms": marker * 1e3, "exit_ms": exit_at * 1e3})
        print(f"  host-root boot {rep + 1}/{args.reps}: initramfs {runs['initramfs'][-1]['exit_ms']:.0f} ms, "
              f"host root {runs['hostroot'][-1]['exit_ms']:.0f} ms to exit", file=sys.stderr)
    return runs


# The guest's script (it travels base64-encoded on the kernel command line, at most 2 KiB, so it
# carries no comments). The zoned disk gets one unmeasured write pass over its zones first, as the
# plain disk's file is written before the boot: the first write to fresh host memory costs the
# lab's outer VM far more than later ones (in one boot: first zoned pass 140-160 MiB/s, later
# passes 200-250). The QD1 jobs compare the disks at the queue depth the zoned one really gets:
# Linux keeps one write in flight per sequential zone.
FIO_GUEST = r"""
run() {
    name=$1; dev=$2; shift 2
    if fio --name=$name --filename=/dev/$dev --direct=1 --ioengine=io_uring --output-format=terse --terse-version=3 "$@" > /tmp/fio.out 2>&1; then
        busybox awk -F';' -v n=$name '$5 == 0 {print "BENCH-FIO", n, $7, $8, $48, $49}' /tmp/fio.out
    else
        echo "BENCH-FAIL $name"; cat /tmp/fio.out; exit 1
    fi
}
run randread vda --rw=randread --bs=4k --iodepth=32 --size=%(disk)dM --time_based --runtime=%(runtime)d
run seqwrite vda --rw=write --bs=128k --iodepth=16 --size=%(write)dM
if [ -b /dev/vdb ]; then
    echo mq-deadline > /sys/block/vdb/queue/scheduler
    blkzone reset /dev/vdb
    fio --name=w --filename=/dev/vdb --direct=1 --ioengine=io_uring --rw=write --bs=128k --iodepth=16 --size=%(write)dM --zonemode=zbd >/dev/null
    blkzone reset /dev/vdb
    run zoned-seqwrite vdb --rw=write --bs=128k --iodepth=16 --size=%(write)dM --zonemode=zbd
    run seqwrite-qd1 vda --rw=write --bs=128k --iodepth=1 --size=%(write)dM --offset=%(write)dM
    blkzone reset /dev/vdb
    run zoned-seqwrite-qd1 vdb --rw=write --bs=128k --iodepth=1 --size=%(write)dM --zonemode=zbd
fi
"""


def parse_fio(text):
    """{job: {"read_kib_s", "read_iops", "write_kib_s", "write_iops"}} from BENCH-FIO lines."""
    jobs = {}
    for line in text.replace("\r", "").splitlines():
        fields = line.split()
        if len(fields) == 6 and fields[0] == "BENCH-FIO":
            values = [float(v) for v in fields[2:]]
            jobs[fields[1]] = dict(zip(("read_kib_s", "read_iops", "write_kib_s", "write_iops"), values))
    return jobs


def run_io(args):
    # fio --zonemode=zbd writes at least one whole zone.
    if args.write_mib < ZONE_MIB:
        sys.exit(f"lab.py: --write-mib {args.write_mib} is below the zoned disk's {ZONE_MIB} MiB zone")
    with open(DISK, "wb") as disk:
        chunk = bytes(range(256)) * 4096
        for _ in range(DISK_MIB):
            disk.write(chunk)
    guest = FIO_GUEST % {"disk": DISK_MIB, "runtime": args.runtime, "write": args.write_mib}
    runs = {"vmm": [], "qemu": []}
    for rep in range(args.reps):
        order = ["vmm", "qemu"] if rep % 2 == 0 else ["qemu", "vmm"]
        for vmm in order:
            if vmm == "vmm":
                if os.path.exists(ZONED):
                    os.unlink(ZONED)
                command = vmm_command(guest, [("disk", DISK),
                                              ("zoned-disk", f"{ZONED},size={DISK_MIB}M,zone-size={ZONE_MIB}M")])
            else:
                command = qemu_command(guest, DISK)
            _, _, text = boot(vmm, command)
            jobs = parse_fio(text)
            expected = {"randread", "seqwrite"}
            if vmm == "vmm":
                expected |= {"zoned-seqwrite", "seqwrite-qd1", "zoned-seqwrite-qd1"}
            if set(jobs) != expected:
                sys.exit(f"lab.py: {vmm}: fio reported {sorted(jobs)}, expected {sorted(expected)}:\n{text[-3000:]}")
            runs[vmm].append(jobs)
            summary = ", ".join(f"{job} {v['read_kib_s'] + v['write_kib_s']:.0f} KiB/s" for job, v in jobs.items())
            print(f"  io {rep + 1}/{args.reps} {vmm}: {summary}", file=sys.stderr)
    os.unlink(DISK)
    return runs


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("part", choices=("boot", "hostroot", "io"))
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--runtime", type=int, default=5)
    parser.add_argument("--write-mib", type=int, default=128)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    for path in (KERNEL, INITRD, VMM):
        if not os.path.exists(path):
            sys.exit(f"lab.py: {path} is missing (make guest build)")
    runs = {"boot": run_boot, "hostroot": run_hostroot, "io": run_io}[args.part](args)
    qemu_version = subprocess.run(["qemu-system-x86_64", "--version"], capture_output=True,
                                  text=True).stdout.splitlines()[0]
    with open(args.out, "w") as out:
        json.dump({"cmdline": CMDLINE, "memory_mib": MEMORY_MIB, "cpus": CPUS,
                   "qemu": qemu_version, "kernel": os.uname().release, "runs": runs}, out, indent=1)


if __name__ == "__main__":
    main()
