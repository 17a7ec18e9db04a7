#!/usr/bin/env python3
"""Turns the JSON the benchmark parts wrote into build/bench/report.md and PNG plots.

  report.py DIR [--quick]

Reads DIR/{startup,device,lab-boot,lab-hostroot,lab-io}.json (a missing part is reported as not run) and
writes DIR/report.md, DIR/*.png, and DIR/summary.md (the table the README quotes). Every figure
is a median with [min, max] over the repetitions; every ratio is computed per repetition from
two figures measured side by side in that repetition, then summarized the same way.
"""
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def load(directory, name):
    path = os.path.join(directory, name)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def stats(values):
    return statistics.median(values), min(values), max(values)


def fmt(values, digits=1, unit=""):
    med, lo, hi = stats(values)
    unit = f" {unit}" if unit else ""
    return f"{med:.{digits}f}{unit} [{lo:.{digits}f}, {hi:.{digits}f}]"


def verdict(value, target, higher_is_better):
    ok = value >= target if higher_is_better else value <= target
    return "met" if ok else "**missed**"


def machine():
    cpu = "unknown CPU"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem_kib = int(f.readline().split()[1])
    pvm = os.path.isdir("/sys/module/kvm_pvm")
    with open("/proc/cpuinfo") as f:
        hw = any(flag in f.read().split() for flag in ("vmx", "svm"))
    if pvm or not hw:
        kvm = ("PVM (kvm_pvm) on this host: startup was measured on it; guest boots and guest I/O "
               "ran in the nested lab (QEMU TCG outer VM with nested kvm-amd), where only ratios mean something")
    else:
        kvm = "hardware KVM: every part ran directly on this host"
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return [
        f"- Machine: {socket.gethostname()}, {os.cpu_count()} CPUs, {mem_kib / 1048576:.0f} GiB RAM",
        f"- CPU: {cpu}",
        f"- Kernel: {platform.release()}",
        f"- KVM: {kvm}",
        f"- Commit: {commit}, {time.strftime('%Y-%m-%d %H:%M %Z')}",
    ]


class Report:
    def __init__(self, directory):
        self.directory = directory
        self.lines = []
        # (figure, value, target, verdict) rows for the summary table.
        self.summary = []

    def add(self, *lines):
        self.lines.extend(lines)

    def plot(self, name, figure):
        figure.tight_layout()
        figure.savefig(os.path.join(self.directory, name), dpi=100)
        plt.close(figure)
        self.add("", f"![{name}]({name})")


def startup_section(report, data):
    report.add("", "## 1. VMM startup and footprint (this host's KVM, no lab)", "")
    if data is None:
        report.add("Not run.")
        return
    runs = data["runs"]
    kvm_run = [r["main_to_kvm_run_ms"] for r in runs]
    pre_main = [r["exec_to_main_ms"] for r in runs]
    total = [a + b for a, b in zip(kvm_run, pre_main)]
    pss = [r["overhead_pss_kib"] / 1024 for r in runs]
    rss = [r["overhead_rss_kib"] / 1024 for r in runs]
    private = [r["overhead_private_kib"] / 1024 for r in runs]
    guest = [r["guest_rss_kib"] / 1024 for r in runs]
    report.add(
        f"{len(runs)} runs of `vmm --memory {data['guest_mib']}M --boot-time` with the guest kernel "
        "and initramfs; memory read from /proc/PID/smaps while the vCPU runs; the guest RAM mapping "
        "is the one mapping of the guest's size.", "",
        "| figure | median [min, max] | target |", "| --- | --- | --- |",
        f"| main → first KVM_RUN (vmm --boot-time) | {fmt(kvm_run, 2, 'ms')} | |",
        f"| exec → exit of `vmm --version` (bound on pre-main cost) | {fmt(pre_main, 2, 'ms')} | |",
        f"| exec → first KVM_RUN (sum of the two) | {fmt(total, 2, 'ms')} | <= 5 ms: {verdict(stats(total)[0], 5, False)} |",
        f"| resident beyond guest RAM, Pss | {fmt(pss, 2, 'MiB')} | <= 5 MiB: {verdict(stats(pss)[0], 5, False)} |",
        f"| resident beyond guest RAM, Rss (shared libraries counted whole) | {fmt(rss, 2, 'MiB')} | |",
        f"| resident beyond guest RAM, private | {fmt(private, 2, 'MiB')} | |",
        f"| guest RAM touched (kernel, initrd, tables) | {fmt(guest, 2, 'MiB')} | |",
    )
    report.summary += [
        ("exec → first KVM_RUN", fmt(total, 2, "ms"), "<= 5 ms", verdict(stats(total)[0], 5, False)),
        ("VMM memory beyond guest RAM (Pss)", fmt(pss, 2, "MiB"), "<= 5 MiB", verdict(stats(pss)[0], 5, False)),
    ]
    zones = data.get("zones")
    if zones:
        report.add(
            "", f"A zoned image as it grows ({zones['zone_kib']} KiB zones): what opening it adds to "
            "main → first KVM_RUN and to the overhead Pss, against a run without one in the same rep.", "",
            "| zones | added to first KVM_RUN | added Pss | bytes per zone |", "| --- | --- | --- | --- |")
        for count, runs_of in zones["runs"].items():
            added_ms = [r["added_kvm_run_ms"] for r in runs_of]
            added_kib = [r["added_pss_kib"] for r in runs_of]
            per_zone = [k * 1024 / int(count) for k in added_kib]
            report.add(f"| {int(count):,} | {fmt(added_ms, 1, 'ms')} | {fmt([k / 1024 for k in added_kib], 2, 'MiB')} "
                       f"| {fmt(per_zone, 1)} |")
        biggest = max(zones["runs"], key=int)
        added_ms = [r["added_kvm_run_ms"] for r in zones["runs"][biggest]]
        per_zone = [r["added_pss_kib"] * 1024 / int(biggest) for r in zones["runs"][biggest]]
        report.summary += [
            (f"opening a {int(biggest):,}-zone image: added to first KVM_RUN", fmt(added_ms, 1, "ms"), "< 50 ms",
             verdict(stats(added_ms)[0], 50, False)),
            (f"opening a {int(biggest):,}-zone image: memory per zone", fmt(per_zone, 1, "B"), "< 64 B",
             verdict(stats(per_zone)[0], 64, False)),
        ]
    figure, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
    left.boxplot([kvm_run, pre_main, total], labels=["main→KVM_RUN", "exec→exit\n(--version)", "sum"])
    left.axhline(5, color="red", linestyle="--", label="target 5 ms")
    left.set_ylabel("ms")
    left.set_title("startup")
    left.legend()
    right.boxplot([pss, rss, private], labels=["Pss", "Rss", "private"])
    right.axhline(5, color="red", linestyle="--", label="target 5 MiB")
    right.set_ylabel("MiB beyond guest RAM")
    right.set_title("footprint")
    right.legend()
    report.plot("startup.png", figure)


def boot_section(report, data):
    report.add("", "## 2. Boot to guest userspace: vmm vs QEMU -M microvm (lab)", "")
    if data is None:
        report.add("Not run.")
        return
    vmm = [r["userspace_ms"] for r in data["runs"]["vmm"]]
    qemu = [r["userspace_ms"] for r in data["runs"]["qemu"]]
    vmm_exit = [r["exit_ms"] for r in data["runs"]["vmm"]]
    qemu_exit = [r["exit_ms"] for r in data["runs"]["qemu"]]
    ratio = [a / b for a, b in zip(vmm, qemu)]
    ratio_exit = [a / b for a, b in zip(vmm_exit, qemu_exit)]
    report.add(
        f"{len(vmm)} interleaved pairs in one lab boot ({data['qemu']} `-M microvm,acpi=off`; "
        f"outer VM kernel {data.get('kernel', '?')}). Same bzImage, initramfs, {data['memory_mib']} MiB, "
        f"{data['cpus']} vCPU, command line `{data['cmdline']} vmm.run64=<true>`. Time from just "
        "before the VMM is started to the console line `vmm-init: userspace reached`, which the "
        "guest's /init prints under both; and to the VMM's exit after `true` ran. Absolute lab "
        "times are TCG times: only the ratios carry over.", "",
        "| figure | median [min, max] | target |", "| --- | --- | --- |",
        f"| vmm: to userspace | {fmt(vmm, 0, 'ms')} | |",
        f"| QEMU microvm: to userspace | {fmt(qemu, 0, 'ms')} | |",
        f"| ratio vmm/QEMU, to userspace | {fmt(ratio, 2)} | <= 0.7: {verdict(stats(ratio)[0], 0.7, False)} |",
        f"| ratio vmm/QEMU, to exit | {fmt(ratio_exit, 2)} | |",
    )
    report.summary.append(("boot to userspace, vmm/QEMU (lab)", fmt(ratio, 2), "<= 0.7",
                           verdict(stats(ratio)[0], 0.7, False)))
    figure, axis = plt.subplots(figsize=(6, 3.5))
    axis.boxplot([vmm, qemu, vmm_exit, qemu_exit],
                 labels=["vmm\nuserspace", "QEMU\nuserspace", "vmm\nexit", "QEMU\nexit"])
    axis.set_ylabel("ms (nested lab, TCG)")
    axis.set_title(f"boot, ratio to userspace {stats(ratio)[0]:.2f}")
    report.plot("boot.png", figure)


def hostroot_section(report, data):
    report.add("", "## 3. Boot to the command: `--host-root` against the initramfs (lab)", "")
    if data is None:
        report.add("Not run.")
        return
    initramfs = [r["exit_ms"] for r in data["runs"]["initramfs"]]
    hostroot = [r["exit_ms"] for r in data["runs"]["hostroot"]]
    ratio = [a / b for a, b in zip(hostroot, initramfs)]
    report.add(
        f"{len(ratio)} interleaved pairs in one lab boot, vmm only, same bzImage, {data['memory_mib']} MiB, "
        f"{data['cpus']} vCPU: `vmm -- true` on the project's initramfs against "
        "`vmm --host-root -- true` (the outer VM's root over virtio-fs through QEMU's virtiofsd, "
        "udevd started in the background, `true` run in the caller's directory). Time from just before vmm is started "
        "to its exit after `true` ran.", "",
        "| figure | median [min, max] | target |", "| --- | --- | --- |",
        f"| initramfs: to exit | {fmt(initramfs, 0, 'ms')} | |",
        f"| host root: to exit | {fmt(hostroot, 0, 'ms')} | |",
        f"| ratio host root/initramfs | {fmt(ratio, 2)} | <= 1.3: {verdict(stats(ratio)[0], 1.3, False)} |",
    )
    report.summary.append(("boot to the command, host root/initramfs (lab)", fmt(ratio, 2), "<= 1.3",
                           verdict(stats(ratio)[0], 1.3, False)))


def device_section(report, data):
    report.add("", "## 4. Device model throughput (no guest, no KVM)", "")
    if data is None:
        report.add("Not run.")
        return
    report.add(
        f"`device-bench`: requests go through a split virtqueue in in-memory guest memory into the "
        f"real virtio-blk device (plain: raw file backend; zoned: zone handler and image file), "
        f"{data['queue_depth']} in flight, {data['reps']} repetitions; each device run is paired "
        f"with a raw `pwrite`/`pread` run of the same sizes on the same file system "
        f"({data['dir']}) right next to it, from {data['queue_depth']} buffers in turn as the "
        f"device's request slots. Data stays in the page cache (no fsync). The first repetition "
        f"of each write case is a warm-up and not counted.", "",
        "| case | device | raw | ratio device/raw | target |", "| --- | --- | --- | --- | --- |",
    )
    labels, medians, lows, highs = [], [], [], []
    for case in data["cases"]:
        unit = case["unit"]
        if case["raw"]:
            ratios = [d / r for d, r in zip(case["device"], case["raw"])]
            med, lo, hi = stats(ratios)
            target = case["target"]
            result = ""
            if target:
                goal = float(target.split()[1])
                result = f"{target}: {verdict(med, goal, True)}"
                report.summary.append((case["name"] + ", device/raw", fmt(ratios, 2), target,
                                       verdict(med, goal, True)))
            report.add(f"| {case['name']} | {fmt(case['device'], 0, unit)} | {fmt(case['raw'], 0, unit)} "
                       f"| {fmt(ratios, 2)} | {result} |")
            labels.append(case["name"])
            medians.append(med)
            lows.append(med - lo)
            highs.append(hi - med)
        else:
            result = ""
            if case["target"]:
                goal = float(case["target"].split()[1])
                result = f"{case['target']}: {verdict(stats(case['device'])[0], goal, False)}"
                report.summary.append((case["name"], fmt(case["device"], 1, unit), case["target"],
                                       verdict(stats(case["device"])[0], goal, False)))
            report.add(f"| {case['name']} | {fmt(case['device'], 1, unit)} | | | {result} |")
    figure, axis = plt.subplots(figsize=(8, 4))
    positions = range(len(labels))
    axis.barh(positions, medians, xerr=[lows, highs], color="tab:blue")
    axis.set_yticks(list(positions))
    axis.set_yticklabels(labels)
    axis.invert_yaxis()
    axis.axvline(0.9, color="red", linestyle="--", label="0.9 (128 KiB write target)")
    axis.axvline(0.7, color="orange", linestyle="--", label="0.7 (4 KiB write target)")
    axis.set_xlabel("device / raw (median, min–max)")
    axis.legend(loc="lower right")
    report.plot("device.png", figure)


def io_section(report, data):
    report.add("", "## 5. Guest I/O with fio: vmm vs QEMU virtio-blk, zoned vs plain (lab)", "")
    if data is None:
        report.add("Not run.")
        return
    vmm, qemu = data["runs"]["vmm"], data["runs"]["qemu"]

    def series(runs, job, field):
        return [r[job][field] for r in runs]

    rr_vmm, rr_qemu = series(vmm, "randread", "read_iops"), series(qemu, "randread", "read_iops")
    sw_vmm = series(vmm, "seqwrite", "write_kib_s")
    sw_qemu = series(qemu, "seqwrite", "write_kib_s")
    zw_vmm = series(vmm, "zoned-seqwrite", "write_kib_s")
    rr_ratio = [a / b for a, b in zip(rr_vmm, rr_qemu)]
    sw_ratio = [a / b for a, b in zip(sw_vmm, sw_qemu)]
    zoned_ratio = [a / b for a, b in zip(zw_vmm, sw_vmm)]
    # Older lab-io.json files lack the QD1 jobs.
    qd1 = all("seqwrite-qd1" in r and "zoned-seqwrite-qd1" in r for r in vmm)
    if qd1:
        sw1_vmm = series(vmm, "seqwrite-qd1", "write_kib_s")
        zw1_vmm = series(vmm, "zoned-seqwrite-qd1", "write_kib_s")
        zoned_qd1_ratio = [a / b for a, b in zip(zw1_vmm, sw1_vmm)]
    report.add(
        f"{len(vmm)} interleaved pairs in one lab boot ({data['qemu']}). fio (io_uring, O_DIRECT) in "
        "the guest on /dev/vda, backed by the same file (in the outer VM's tmpfs) under both VMMs; "
        "QEMU (`-M microvm,acpi=off`) has virtio-blk on virtio-mmio (`-device virtio-blk-device`, cache=writeback). "
        "Our VMM also has a zoned disk (64 MiB zones) written with `--zonemode=zbd` and "
        "mq-deadline, in the same boot as the plain-disk jobs, after one unmeasured write pass "
        "over its zones and a reset (the plain disk's file is written before the boot).", "",
        "| figure | vmm | QEMU | ratio | target |", "| --- | --- | --- | --- | --- |",
        f"| 4 KiB random read QD32, IOPS | {fmt(rr_vmm, 0)} | {fmt(rr_qemu, 0)} | {fmt(rr_ratio, 2)} "
        f"| >= 1.0: {verdict(stats(rr_ratio)[0], 1.0, True)} |",
        f"| 128 KiB sequential write QD16, MiB/s | {fmt([v / 1024 for v in sw_vmm], 1)} "
        f"| {fmt([v / 1024 for v in sw_qemu], 1)} | {fmt(sw_ratio, 2)} | >= 1.0: {verdict(stats(sw_ratio)[0], 1.0, True)} |",
        f"| zoned (zbd) 128 KiB sequential write QD16, MiB/s, ratio to our plain disk "
        f"| {fmt([v / 1024 for v in zw_vmm], 1)} | | {fmt(zoned_ratio, 2)} | >= 0.9: {verdict(stats(zoned_ratio)[0], 0.9, True)} |",
    )
    if qd1:
        report.add(
            f"| extra: our plain disk, 128 KiB sequential write QD1, MiB/s | {fmt([v / 1024 for v in sw1_vmm], 1)} | | | |",
            f"| extra: zoned (zbd) 128 KiB sequential write QD1, MiB/s, ratio to our plain disk at QD1 "
            f"| {fmt([v / 1024 for v in zw1_vmm], 1)} | | {fmt(zoned_qd1_ratio, 2)} | |",
            "",
            "Linux 6.12 keeps one write in flight per sequential zone (zone write plugging), so the zoned "
            "job above runs at queue depth 1 while the plain one runs at 16 (Linux merges the waiting "
            "writes into requests of about 1 MiB); the QD1 rows compare the two disks at the queue depth "
            "the zoned one really gets. Reset zones' blocks go back to the host only once the guest "
            "leaves the disk alone for a second, so a pass that follows a reset at once overwrites "
            "blocks the image still has: see README, \"Benchmarks\".",
        )
    report.summary += [
        ("guest 4 KiB randread QD32, vmm/QEMU (lab)", fmt(rr_ratio, 2), ">= 1.0", verdict(stats(rr_ratio)[0], 1.0, True)),
        ("guest 128 KiB seq write QD16, vmm/QEMU (lab)", fmt(sw_ratio, 2), ">= 1.0", verdict(stats(sw_ratio)[0], 1.0, True)),
        ("guest zoned/plain seq write (lab)", fmt(zoned_ratio, 2), ">= 0.9", verdict(stats(zoned_ratio)[0], 0.9, True)),
    ]
    figure, axis = plt.subplots(figsize=(6, 3.5))
    groups = [rr_ratio, sw_ratio, zoned_ratio]
    names = ["randread 4K\nvmm/QEMU", "seq write 128K\nvmm/QEMU", "zoned/plain\nseq write"]
    medians = [stats(g)[0] for g in groups]
    axis.bar(names, medians, yerr=[[m - min(g) for m, g in zip(medians, groups)],
                                   [max(g) - m for m, g in zip(medians, groups)]])
    axis.axhline(1.0, color="red", linestyle="--")
    axis.set_ylabel("ratio (median, min–max)")
    axis.set_title("guest I/O in the lab")
    report.plot("guest-io.png", figure)


def main():
    directory = sys.argv[1]
    quick = "--quick" in sys.argv[2:]
    report = Report(directory)
    report.add("# vmm benchmark report", "")
    if quick:
        report.add("**Smoke pass (`make bench-smoke`): few repetitions, small sizes; not figures to quote.**", "")
    report.add(*machine())
    startup_section(report, load(directory, "startup.json"))
    boot_section(report, load(directory, "lab-boot.json"))
    hostroot_section(report, load(directory, "lab-hostroot.json"))
    device_section(report, load(directory, "device.json"))
    io_section(report, load(directory, "lab-io.json"))
    table = ["| figure | median [min, max] | target | |", "| --- | --- | --- | --- |"]
    table += [f"| {name} | {value} | {target} | {result} |" for name, value, target, result in report.summary]
    report.lines[report.lines.index("# vmm benchmark report") + 1:1] = ["", "## Summary", "", *table, ""]
    with open(os.path.join(directory, "report.md"), "w") as f:
        f.write("\n".join(report.lines) + "\n")
    with open(os.path.join(directory, "summary.md"), "w") as f:
        f.write("\n".join(table) + "\n")
    print("\n".join(table))


if __name__ == "__main__":
    main()
