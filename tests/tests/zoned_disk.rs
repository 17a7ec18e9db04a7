//! The zoned disk as the real Linux 6.12 driver sees it, booted with our VMM in the lab: sysfs
//! and `blkzone report` match the options, zone transitions and resource errors, writes split at
//! zone boundaries, fio in zbd mode with verify, btrfs (which issues ZONE_APPEND), state that
//! survives a reboot. A SIGKILL that loses no flushed data is torture.rs. Run by `make lab-test`.
//!
//! Each test is a lab script: guest scripts travel as a small read-only raw disk (see
//! `script_disk`) because the kernel command line is too short for them.

use vmm_tests::run_script_in_lab;

/// Zone geometry used by most tests: 64 zones of 4 MiB, one conventional, limits 6 open / 8 active.
const SMALL_ZONES: &str =
    "size=256M,zone-size=4M,conventional-zones=1,max-open=6,max-active=8,max-append=512K";

/// Guest-side helpers shared by the tests' guest scripts: zone condition and write pointer of the
/// zone starting at a sector, and a `check` that prints PASS/FAIL.
const GUEST_HELPERS: &str = r#"
cond() { blkzone report -o "$1" -c 1 /dev/vda | sed -n 's/.*zcond: *\([0-9]*\).*/\1/p'; }
wptr() { printf '%d\n' "$(blkzone report -o "$1" -c 1 /dev/vda | sed -n 's/.*wptr \(0x[0-9a-f]*\).*/\1/p')"; }
check() { if [ "$2" = "$3" ]; then echo "PASS $1"; else echo "FAIL $1: got '$2', expected '$3'"; fi; }
"#;

fn guest_script(body: &str) -> String {
    format!("{GUEST_HELPERS}\n{body}")
}

/// A lab script that writes `guest` to /tmp/guest.sh and runs it in our VMM with a zoned disk
/// made from `zoned_options` (at /tmp/z.img) as vda and the script as vdb.
fn lab_script_with_guest(zoned_options: &str, guest: &str) -> String {
    format!(
        r#"
cat > /tmp/guest.sh <<'GUEST_EOF'
{}
GUEST_EOF
script_disk /tmp/guest.sh
set +e
"$VMM" --kernel "$KERNEL" --initrd "$INITRD" --memory 512M --zoned-disk /tmp/z.img,{zoned_options} --disk /tmp/guest.sh,ro -- bash /dev/vdb
echo "vmm exit status $?"
"#,
        guest_script(guest)
    )
}

#[test]
#[ignore = "boots the guest in the lab; run by `make lab-test`"]
fn sysfs_and_report_match_the_options() {
    let guest = r#"
q=/sys/block/vda/queue
for f in zoned chunk_sectors nr_zones max_open_zones max_active_zones zone_append_max_bytes; do echo "$f=$(cat $q/$f)"; done
echo "ioctl zone size $(blkzone report -c 1 /dev/vda | sed -n 's/.*len \(0x[0-9a-f]*\).*/\1/p')"
echo "report lines $(blkzone report /dev/vda | wc -l)"
blkzone report -c 2 /dev/vda
blkzone report -o $(( (63) * 8192 )) /dev/vda
"#;
    let run = run_script_in_lab(300, &lab_script_with_guest(SMALL_ZONES, guest));
    run.assert_ok();
    run.assert_lines(&[
        "zoned=host-managed",
        "chunk_sectors=8192",
        "nr_zones=64",
        "max_open_zones=6",
        "max_active_zones=8",
        "zone_append_max_bytes=524288",
        "ioctl zone size 0x002000",
        "report lines 64",
        "vmm exit status 0",
    ]);
    assert!(run.stdout.contains("start: 0x000000000, len 0x002000, cap 0x002000, wptr 0x000000 reset:0 non-seq:0, zcond: 0(nw) [type: 1(CONVENTIONAL)]"), "{}", run.describe());
    assert!(run.stdout.contains("start: 0x000002000, len 0x002000, cap 0x002000, wptr 0x000000 reset:0 non-seq:0, zcond: 1(em) [type: 2(SEQ_WRITE_REQUIRED)]"), "{}", run.describe());
    assert!(
        run.stdout
            .contains("start: 0x00007e000, len 0x002000, cap 0x002000"),
        "{}",
        run.describe()
    );
}

#[test]
#[ignore = "boots the guest in the lab; run by `make lab-test`"]
fn zone_capacity_below_zone_size_and_a_smaller_last_zone() {
    // 250 MiB in 8 MiB zones: 31 full zones and a 2 MiB last one; sequential zones hold 6 MiB.
    let guest = r#"
echo "nr_zones=$(cat /sys/block/vda/queue/nr_zones)"
blkzone report -o 0 -c 1 /dev/vda
blkzone report -o $(( 31 * 16384 )) -c 1 /dev/vda
# Writing past the capacity of a zone fails; filling the capacity makes it full.
dd if=/dev/zero of=/dev/vda bs=1M count=6 seek=8 oflag=direct 2>/dev/null && echo "filled zone 1"
check full-at-capacity "$(cond 16384)" 14
dd if=/dev/zero of=/dev/vda bs=1M count=7 seek=16 oflag=direct 2>/dev/null && echo "FAIL wrote past the zone capacity" || echo "PASS write past capacity refused"
"#;
    let run = run_script_in_lab(
        300,
        &lab_script_with_guest("size=250M,zone-size=8M,zone-capacity=6M", guest),
    );
    run.assert_ok();
    run.assert_lines(&[
        "nr_zones=32",
        "filled zone 1",
        "PASS full-at-capacity",
        "PASS write past capacity refused",
    ]);
    assert!(
        run.stdout
            .contains("start: 0x000000000, len 0x004000, cap 0x003000"),
        "{}",
        run.describe()
    );
    assert!(
        run.stdout
            .contains("start: 0x00007c000, len 0x001000, cap 0x001000"),
        "{}",
        run.describe()
    );
}

#[test]
#[ignore = "boots the guest in the lab; run by `make lab-test`"]
fn zone_transitions_resource_limits_and_reads_above_the_write_pointer() {
    let guest = r#"
Z1=8192; Z2=16384; Z3=24576
blkzone open -o $Z1 -c 1 /dev/vda;   check open-empty "$(cond $Z1)" 3
blkzone close -o $Z1 -c 1 /dev/vda;  check close-empty-becomes-empty "$(cond $Z1)" 1
dd if=/dev/urandom of=/dev/vda bs=4k count=3 seek=$((Z1/8)) oflag=direct 2>/dev/null
check write-opens-implicitly "$(cond $Z1)" 2
check write-moves-wp "$(wptr $Z1)" 24
blkzone close -o $Z1 -c 1 /dev/vda;  check close-written "$(cond $Z1)" 4
blkzone open -o $Z1 -c 1 /dev/vda;   check reopen "$(cond $Z1)" 3
blkzone finish -o $Z1 -c 1 /dev/vda; check finish "$(cond $Z1)" 14
blkzone reset -o $Z1 -c 1 /dev/vda;  check reset "$(cond $Z1)" 1
check reset-wp "$(wptr $Z1)" 0
# A write that is not at the write pointer fails and moves nothing.
dd if=/dev/zero of=/dev/vda bs=4k count=1 seek=$((Z2/8 + 1)) oflag=direct 2>/dev/null && echo "FAIL unaligned write accepted" || echo "PASS unaligned write refused"
check unaligned-leaves-zone "$(cond $Z2)" 1
# Reads above the write pointer return zeros.
dd if=/dev/urandom of=/dev/vda bs=4k count=1 seek=$((Z2/8)) oflag=direct 2>/dev/null
check read-above-wp-zeros "$(dd if=/dev/vda bs=4k skip=$((Z2/8 + 1)) count=8 iflag=direct 2>/dev/null | tr -d '\0' | wc -c)" 0
check read-below-wp-data "$(dd if=/dev/vda bs=4k skip=$((Z2/8)) count=1 iflag=direct 2>/dev/null | tr -d '\0' | wc -c | awk '{print ($1 > 0)}')" 1
blkzone reset /dev/vda
# Open limit 6: six explicit opens work, the seventh gets the open-resource error.
for i in 1 2 3 4 5 6; do blkzone open -o $((i * 8192)) -c 1 /dev/vda; done
err=$(blkzone open -o $((7 * 8192)) -c 1 /dev/vda 2>&1) && echo "FAIL seventh open accepted" || echo "open7: $err"
check seventh-stays-empty "$(cond $((7 * 8192)))" 1
# Active limit 8. Closing an explicitly opened empty zone makes it empty again, not active.
for i in 1 2 3 4 5 6; do blkzone close -o $((i * 8192)) -c 1 /dev/vda; done
check close-empty-frees-resources "$(cond 8192)" 1
# Writes to 8 zones: 6 implicitly open, then the device implicitly closes one per new zone.
for i in 1 2 3 4 5 6 7 8; do dd if=/dev/zero of=/dev/vda bs=4k count=1 seek=$((i * 1024)) oflag=direct 2>/dev/null; done
check implicit-close "$(blkzone report /dev/vda | grep -c 'zcond: 4')" 2
err=$(dd if=/dev/zero of=/dev/vda bs=4k count=1 seek=$((9 * 1024)) oflag=direct 2>&1) && echo "FAIL ninth active zone accepted" || echo "active9: $err"
check ninth-stays-empty "$(cond $((9 * 8192)))" 1
"#;
    let run = run_script_in_lab(300, &lab_script_with_guest(SMALL_ZONES, guest));
    run.assert_ok();
    for check in [
        "open-empty",
        "close-empty-becomes-empty",
        "write-opens-implicitly",
        "write-moves-wp",
        "close-written",
        "reopen",
        "finish",
        "reset",
        "reset-wp",
        "unaligned write refused",
        "unaligned-leaves-zone",
        "read-above-wp-zeros",
        "read-below-wp-data",
        "seventh-stays-empty",
        "ninth-stays-empty",
        "close-empty-frees-resources",
        "implicit-close",
    ] {
        run.assert_lines(&[&format!("PASS {check}")]);
    }
    // Linux turns OPEN_RESOURCE into ETOOMANYREFS and ACTIVE_RESOURCE into EOVERFLOW.
    assert!(
        run.stdout.contains("open7:") && run.stdout.contains("Too many references"),
        "{}",
        run.describe()
    );
    assert!(
        run.stdout.contains("active9:") && run.stdout.contains("Value too large"),
        "{}",
        run.describe()
    );
}

#[test]
#[ignore = "boots the guest in the lab; run by `make lab-test`"]
fn a_write_across_a_zone_boundary_is_split_and_lands_correctly() {
    let guest = r#"
Z1=8192; Z2=16384
# Fill zone 1 up to its last 4 KiB, then write 8 KiB across the boundary into zone 2.
dd if=/dev/zero of=/dev/vda bs=4k count=1023 seek=$((Z1/8)) oflag=direct 2>/dev/null
head -c 8192 /dev/urandom > /tmp/span
# One 8 KiB write request at a byte offset (GNU dd's seek_bytes), 4 KiB before the boundary.
dd if=/tmp/span of=/dev/vda bs=8k count=1 seek=$(( (Z2 - 8) * 512 )) oflag=direct,seek_bytes 2>/dev/null && echo "PASS spanning write accepted"
check zone1-full "$(cond $Z1)" 14
check zone2-wp "$(wptr $Z2)" 8
check data "$(dd if=/dev/vda bs=4k skip=$(( (Z2 - 8) / 8 )) count=2 iflag=direct 2>/dev/null | md5sum)" "$(md5sum < /tmp/span)"
"#;
    let run = run_script_in_lab(300, &lab_script_with_guest(SMALL_ZONES, guest));
    run.assert_ok();
    run.assert_lines(&[
        "PASS spanning write accepted",
        "PASS zone1-full",
        "PASS zone2-wp",
        "PASS data",
    ]);
}

#[test]
#[ignore = "boots the guest in the lab; run by `make lab-test`"]
fn fio_zbd_mode_verifies_sequential_and_random_writes() {
    let guest = r#"
common="--filename=/dev/vda --direct=1 --zonemode=zbd --verify=crc32c --ioengine=io_uring --offset=4M"
for job in "seq-qd1 --rw=write --bs=16k --iodepth=1 --size=16M" \
           "seq-qd16 --rw=write --bs=64k --iodepth=16 --size=32M" \
           "rand --rw=randwrite --bs=16k --iodepth=8 --size=32M --io_size=8M"; do
    set -- $job
    name=$1; shift
    for sched in mq-deadline none; do
        echo $sched > /sys/block/vda/queue/scheduler
        blkzone reset /dev/vda
        if fio --name=$name $common "$@" > /tmp/fio.out 2>&1 && grep -q "err= 0" /tmp/fio.out; then
            echo "PASS fio $name $sched"
        else
            echo "FAIL fio $name $sched"; cat /tmp/fio.out
        fi
    done
done
"#;
    let run = run_script_in_lab(600, &lab_script_with_guest(SMALL_ZONES, guest));
    run.assert_ok();
    for job in ["seq-qd1", "seq-qd16", "rand"] {
        for sched in ["mq-deadline", "none"] {
            run.assert_lines(&[&format!("PASS fio {job} {sched}")]);
        }
    }
}

#[test]
#[ignore = "boots the guest in the lab; run by `make lab-test`"]
fn btrfs_uses_zone_append_and_reads_back_what_it_wrote() {
    let guest = r#"
mkfs.btrfs -q -f -d single -m single /dev/vda > /tmp/mkfs.out 2>&1 || { echo "FAIL mkfs"; cat /tmp/mkfs.out; }
mkdir -p /mnt && mount -t btrfs /dev/vda /mnt || echo "FAIL mount"
head -c 12582912 /dev/urandom > /tmp/file
cp /tmp/file /mnt/file && sync
umount /mnt && mount -t btrfs /dev/vda /mnt || echo "FAIL remount"
check btrfs-data "$(md5sum < /mnt/file)" "$(md5sum < /tmp/file)"
umount /mnt
"#;
    let script = lab_script_with_guest("size=1G,zone-size=16M", guest)
        .replace("\"$VMM\"", "VMM_LOG=info \"$VMM\"");
    let run = run_script_in_lab(600, &script);
    run.assert_ok();
    run.assert_lines(&["PASS btrfs-data"]);
    let appends = run.zoned_appends();
    assert!(
        appends > 0,
        "btrfs issued no ZONE_APPEND\n{}",
        run.describe()
    );
}

#[test]
#[ignore = "boots the guest in the lab; run by `make lab-test`"]
fn zone_state_and_data_survive_a_reboot() {
    let script = r#"
cat > /tmp/first.sh <<'EOF'
dd if=/dev/urandom of=/dev/vda bs=64k count=5 seek=$((8192*512/65536)) oflag=direct 2>/dev/null
dd if=/dev/urandom of=/dev/vda bs=4k count=1024 seek=$((16384/8)) oflag=direct 2>/dev/null
blkzone open -o 24576 -c 1 /dev/vda
dd if=/dev/urandom of=/dev/vda bs=4k count=2 seek=$((24576/8)) oflag=direct 2>/dev/null
dd if=/dev/urandom of=/dev/vda bs=64k count=8 oflag=direct 2>/dev/null
blkzone report -c 5 /dev/vda
dd if=/dev/vda bs=1M count=16 iflag=direct 2>/dev/null | md5sum
EOF
cp /tmp/first.sh /tmp/second.sh
sed -i '1,5d' /tmp/second.sh
script_disk /tmp/first.sh; script_disk /tmp/second.sh
OPTS=size=256M,zone-size=4M,conventional-zones=1
"$VMM" --kernel "$KERNEL" --initrd "$INITRD" --zoned-disk /tmp/z.img,$OPTS --disk /tmp/first.sh,ro -- bash /dev/vdb > /tmp/first.out
"$VMM" --kernel "$KERNEL" --initrd "$INITRD" --zoned-disk /tmp/z.img --disk /tmp/second.sh,ro -- bash /dev/vdb > /tmp/second.out
echo "--- first"; grep -E "start:|  -" /tmp/first.out
echo "--- second"; grep -E "start:|  -" /tmp/second.out
"#;
    let run = run_script_in_lab(600, script);
    assert_eq!(run.status, Some(0), "{}", run.describe());
    let (first, second) = run
        .stdout
        .split_once("--- second")
        .expect("both boots reported");
    let pick = |text: &str| -> Vec<String> {
        text.lines()
            .filter(|l| l.contains("start:") || l.trim_end().ends_with("  -"))
            .map(|l| l.trim().to_string())
            .collect()
    };
    let (first, second) = (pick(first), pick(second));
    assert_eq!(first.len(), 6, "{}", run.describe());
    assert_eq!(second.len(), 6, "{}", run.describe());
    // Same write pointers and data; zones that were open come back closed (4).
    for (before, after) in first.iter().zip(&second) {
        let before = before
            .replace("zcond: 2(oi)", "zcond: 4(cl)")
            .replace("zcond: 3(oe)", "zcond: 4(cl)");
        assert_eq!(&before, after, "{}", run.describe());
    }
    assert!(
        second.iter().any(|l| l.contains("zcond:14(fu)")),
        "{}",
        run.describe()
    );
    assert!(
        second.iter().any(|l| l.contains("zcond: 4(cl)")),
        "{}",
        run.describe()
    );
}

#[test]
#[ignore = "boots the guest in the lab; run by `make lab-test`"]
fn a_throwaway_zoned_disk_leaves_nothing_behind() {
    let run = run_script_in_lab(
        300,
        r#"
        export TMPDIR=/tmp/throwaway && mkdir -p $TMPDIR
        "$VMM" --kernel "$KERNEL" --initrd "$INITRD" --zoned-disk tmp,size=256M,zone-size=4M -- \
            'echo zones=$(cat /sys/block/vda/queue/nr_zones); blkzone open -o 8192 -c 1 /dev/vda'
        echo "left behind: $(ls $TMPDIR | wc -l)"
        "#,
    );
    assert_eq!(run.status, Some(0), "{}", run.describe());
    run.assert_lines(&["zones=64", "left behind: 0"]);
}

#[test]
#[ignore = "boots the guest in the lab; run by `make lab-test`"]
fn injected_faults_reach_the_guest_for_one_run_only() {
    let script = r#"
cat > /tmp/faulty.sh <<'EOF'
blkzone report -o $((2 * 32768)) -c 3 /dev/vda
for i in 0 1 1; do
    dd if=/dev/zero of=/dev/vda bs=4k count=1 seek=$((4 * 4096 + i)) oflag=direct 2>&1 | grep -m1 "dd:\|copied"
    echo "zone4 wp $(blkzone report -o $((4 * 32768)) -c 1 /dev/vda | sed -n 's/.*wptr \(0x[0-9a-f]*\).*/\1/p')"
done
zoned-check --quick /dev/vda | grep -E "zones shown|zone-refuses-writes|zoned-check:"
EOF
script_disk /tmp/faulty.sh
set +e
"$VMM" --kernel "$KERNEL" --initrd "$INITRD" --memory 1G \
    --zoned-disk /tmp/f.img,size=1G,zone-size=16M,read-only-zones=2,offline-zones=3,fail-write=4:2 \
    --disk /tmp/faulty.sh,ro -- bash /dev/vdb
echo "first run: $?"
"$VMM" --kernel "$KERNEL" --initrd "$INITRD" --zoned-disk /tmp/f.img -- 'blkzone report -o $((2 * 32768)) -c 2 /dev/vda'
"#;
    let run = run_script_in_lab(600, script);
    assert_eq!(run.status, Some(0), "{}", run.describe());
    let out = &run.stdout;
    assert!(
        out.contains("zcond:13(ro)") && out.contains("zcond:15(of)"),
        "{}",
        run.describe()
    );
    // First write lands, the second (injected) fails, the next one at the write pointer lands.
    run.assert_lines(&["zone4 wp 0x000008", "zone4 wp 0x000010"]);
    assert!(
        out.contains("dd: error writing '/dev/vda': Input/output error"),
        "{}",
        run.describe()
    );
    assert!(
        out.contains("PASS read-only-zone-refuses-writes"),
        "{}",
        run.describe()
    );
    assert!(
        out.contains("PASS offline-zone-refuses-writes"),
        "{}",
        run.describe()
    );
    assert!(
        out.contains("zoned-check: 20 passed, 0 failed"),
        "{}",
        run.describe()
    );
    run.assert_lines(&["first run: 0"]);
    // Nothing was stored: without the options, zones 2 and 3 are plain empty zones again.
    let second = out.split("first run: 0").nth(1).unwrap_or_default();
    assert_eq!(
        second.matches("zcond: 1(em)").count(),
        2,
        "{}",
        run.describe()
    );
}

#[test]
#[ignore = "boots the guest in the lab; run by `make lab-test`"]
fn reclaim_off_keeps_reset_zones_allocated_and_they_still_read_as_zeros() {
    // Each boot writes 8 MiB into zones 2 and 3 and resets them; the host then sees how much of the image
    // is allocated. By default the blocks go back once the guest leaves the disk alone (the
    // first boot then sleeps, and the host watches the image shrink while vmm still runs); with
    // reclaim=off they stay, and the guest still reads zeros above the write pointer.
    let guest = "dd if=/dev/urandom of=/dev/vda bs=1M count=8 seek=8 oflag=direct status=none && \
                 blkzone reset -o 16384 -c 2 /dev/vda && \
                 a=$(dd if=/dev/vda bs=1M count=8 skip=8 iflag=direct status=none | md5sum) && \
                 b=$(head -c 8388608 /dev/zero | md5sum) && \
                 if [ \"$a\" = \"$b\" ]; then echo zeros=yes; else echo zeros=no; fi";
    let script = format!(
        r#"
allocated() {{ echo "$1 $(( $(stat -c %b /tmp/z.img) * $(stat -c %B /tmp/z.img) / 1048576 ))"; }}
"$VMM" --kernel "$KERNEL" --initrd "$INITRD" --zoned-disk /tmp/z.img,size=64M,zone-size=4M -- '{guest} && echo reset-done && sleep 8' > /tmp/vmm.out 2>&1 &
vmm=$!
# The smallest allocation seen after the reset while vmm still ran: the idle reclaim's.
least=
while kill -0 $vmm 2>/dev/null; do
  if grep -q reset-done /tmp/vmm.out; then
    now=$(( $(stat -c %b /tmp/z.img) * $(stat -c %B /tmp/z.img) / 1048576 ))
    [ -z "$least" ] || [ "$now" -lt "$least" ] && least=$now
  fi
  sleep 0.2
done
wait $vmm; echo "default-status $?"
cat /tmp/vmm.out
echo "idle-MiB ${{least:-none}}"
allocated "default-MiB"
"$VMM" --kernel "$KERNEL" --initrd "$INITRD" --zoned-disk /tmp/z.img,reclaim=off -- '{guest}'
allocated "reclaim-off-MiB"
"#
    );
    let run = run_script_in_lab(300, &script);
    assert_eq!(run.status, Some(0), "{}", run.describe());
    assert_eq!(
        run.stdout.matches("zeros=yes").count(),
        2,
        "{}",
        run.describe()
    );
    let mib = |key: &str| -> u64 {
        run.stdout
            .lines()
            .find_map(|line| line.trim().strip_prefix(key))
            .and_then(|rest| rest.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {key} line\n{}", run.describe()))
    };
    assert_eq!(mib("default-status"), 0, "{}", run.describe());
    assert!(mib("idle-MiB") < 2, "{}", run.describe());
    assert!(mib("default-MiB") < 2, "{}", run.describe());
    assert!(mib("reclaim-off-MiB") >= 8, "{}", run.describe());
}
