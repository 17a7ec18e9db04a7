#!/usr/bin/env python3
"""VMM startup and footprint, on this host's own KVM (no lab): for each repetition, start vmm
with the project's guest kernel and initramfs, wait until its vCPU thread runs, read
/proc/PID/smaps, stop it with SIGTERM and take its --boot-time line.

Figures per run:
  main_to_kvm_run_ms  vmm's own --boot-time "first KVM_RUN" (from the start of main)
  exec_to_main_ms     wall time of `vmm --version` (exec, dynamic loading, argument parsing,
                      exit): an upper bound of what happens before main
  overhead_*_kib      resident memory outside the guest RAM mapping (Rss, Pss, private)
  guest_rss_kib       guest RAM pages touched so far (kernel, initrd, boot tables); with
                      --map-images the kernel and initrd pages count only once touched

With --zones-dir DIR, also the cost of a zoned image as it grows: images of 16, 10,000 and
1,000,000 zones (64 KiB zones) are created in DIR by one unmeasured run each, then each rep
runs vmm without a zoned disk and with each image, in turn; the figures are the differences in
first KVM_RUN and in overhead Pss against the run without one (in "zones").

  startup.py --vmm BIN --kernel K --initrd I --reps N [--zones-dir DIR] --out FILE.json
"""
import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time

GUEST_MIB = 256


def read_smaps(pid):
    """The mappings of PID as dicts: start, end, path ('' if anonymous) and the kB fields."""
    vmas = []
    with open(f"/proc/{pid}/smaps") as smaps:
        for line in smaps:
            fields = line.split()
            if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
                start, end = (int(x, 16) for x in fields[0].split("-"))
                vmas.append({"start": start, "end": end,
                             "path": fields[5] if len(fields) > 5 else ""})
            elif len(fields) == 3 and fields[2] == "kB":
                vmas[-1][fields[0].rstrip(":")] = int(fields[1])
    return vmas


def guest_ram(vmas, guest_kib, files):
    """Indices of the mappings that make up guest RAM: one anonymous mapping of the guest's
    size, or, when vmm maps the kernel and initrd files over parts of it, the address-contiguous
    run of anonymous mappings and those file mappings that adds up to the guest's size."""
    files = {os.path.realpath(f) for f in files}
    for i, vma in enumerate(vmas):
        if vma["Size"] == guest_kib and not vma["path"]:
            return set(range(i, i + 1))
    for first in range(len(vmas)):
        total, has_file = 0, False
        for last in range(first, len(vmas)):
            vma = vmas[last]
            if vma["path"] and vma["path"] not in files:
                break
            if last > first and vma["start"] != vmas[last - 1]["end"]:
                break
            total += vma["Size"]
            has_file = has_file or bool(vma["path"])
            if total == guest_kib and has_file:
                return set(range(first, last + 1))
            if total > guest_kib:
                break
    sys.exit("startup: cannot find the guest RAM mapping in smaps")


def smaps_split(pid, guest_kib, files):
    """Sums smaps fields over the guest RAM mappings and over everything else."""
    vmas = read_smaps(pid)
    ram = guest_ram(vmas, guest_kib, files)
    guest = {"Rss": 0, "Pss": 0}
    other = {"Rss": 0, "Pss": 0, "Private": 0, "Anonymous": 0}
    for i, vma in enumerate(vmas):
        if i in ram:
            guest["Rss"] += vma["Rss"]
            guest["Pss"] += vma["Pss"]
        else:
            other["Rss"] += vma["Rss"]
            other["Pss"] += vma["Pss"]
            other["Private"] += vma["Private_Clean"] + vma["Private_Dirty"]
            other["Anonymous"] += vma["Anonymous"]
    return guest, other


def vcpu_running(pid):
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/comm") as comm:
                if comm.read().strip() == "vcpu0":
                    return True
    except OSError:
        pass
    return False


ZONE_COUNTS = (16, 10_000, 1_000_000)
ZONE_KIB = 64


def one_run(args, zoned=None):
    command = [
        args.vmm, "--kernel", args.kernel, "--initrd", args.initrd,
        "--memory", f"{GUEST_MIB}M", "--boot-time",
    ]
    if zoned:
        command += ["--zoned-disk", zoned]
    command += ["--", "sleep 30"]
    proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 10
    while not vcpu_running(proc.pid):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            _, err = proc.communicate()
            sys.exit(f"startup: vmm never started its vCPU: {err.strip()}")
        time.sleep(0.001)
    # Let setup finish on the main thread (it starts the vCPU threads last) before sampling.
    time.sleep(0.2)
    try:
        guest, other = smaps_split(proc.pid, GUEST_MIB * 1024, [args.kernel, args.initrd])
    except SystemExit:
        proc.kill()
        raise
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=10)
    match = re.search(r"first KVM_RUN ([0-9.]+) ms", err)
    if not match:
        sys.exit(f"startup: no boot-time line from vmm: {err.strip()}")
    return {
        "main_to_kvm_run_ms": float(match.group(1)),
        "overhead_rss_kib": other["Rss"],
        "overhead_pss_kib": other["Pss"],
        "overhead_private_kib": other["Private"],
        "overhead_anon_kib": other["Anonymous"],
        "guest_rss_kib": guest["Rss"],
    }


def exec_to_exit_ms(vmm):
    # posix_spawn (vfork) rather than subprocess, whose fork of the Python process would count.
    devnull = os.open(os.devnull, os.O_WRONLY)
    start = time.perf_counter()
    pid = os.posix_spawn(vmm, [vmm, "--version"], os.environ,
                         file_actions=[(os.POSIX_SPAWN_DUP2, devnull, 1)])
    _, status = os.waitpid(pid, 0)
    elapsed = (time.perf_counter() - start) * 1e3
    os.close(devnull)
    if status != 0:
        sys.exit(f"startup: {vmm} --version failed ({status})")
    return elapsed


def main():
    parser = argparse.ArgumentParser()
    for name in ("--vmm", "--kernel", "--initrd", "--out"):
        parser.add_argument(name, required=True)
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--zones-dir")
    args = parser.parse_args()
    runs = []
    for rep in range(args.reps):
        run = one_run(args)
        run["exec_to_main_ms"] = exec_to_exit_ms(args.vmm)
        runs.append(run)
        print(f"  startup {rep + 1}/{args.reps}: first KVM_RUN {run['main_to_kvm_run_ms']:.2f} ms"
              f" after main, overhead Pss {run['overhead_pss_kib'] / 1024:.2f} MiB",
              file=sys.stderr)
    result = {"guest_mib": GUEST_MIB, "runs": runs}
    if args.zones_dir:
        result["zones"] = zone_costs(args)
    with open(args.out, "w") as out:
        json.dump(result, out, indent=1)


def zone_costs(args):
    os.makedirs(args.zones_dir, exist_ok=True)
    images = {}
    for count in ZONE_COUNTS:
        path = os.path.join(args.zones_dir, f"zones-{count}.img")
        if os.path.exists(path):
            os.unlink(path)
        images[count] = path
        print(f"  zones: creating an image of {count:,} zones", file=sys.stderr)
        one_run(args, f"{path},size={count * ZONE_KIB}K,zone-size={ZONE_KIB}K")
    runs = {str(count): [] for count in ZONE_COUNTS}
    for rep in range(max(3, args.reps // 2)):
        base = one_run(args)
        for count in ZONE_COUNTS:
            run = one_run(args, images[count])
            runs[str(count)].append({
                "added_kvm_run_ms": run["main_to_kvm_run_ms"] - base["main_to_kvm_run_ms"],
                "added_pss_kib": run["overhead_pss_kib"] - base["overhead_pss_kib"],
            })
        last = runs[str(ZONE_COUNTS[-1])][-1]
        print(f"  zones {rep + 1}: {ZONE_COUNTS[-1]:,} zones add {last['added_kvm_run_ms']:.1f} ms, "
              f"{last['added_pss_kib'] * 1024 / ZONE_COUNTS[-1]:.1f} bytes per zone", file=sys.stderr)
    for path in images.values():
        os.unlink(path)
    return {"zone_kib": ZONE_KIB, "runs": runs}


if __name__ == "__main__":
    main()
