//! `--power-cut` with a real Linux guest in the lab: a zoned disk with `cache=volatile` loses
//! exactly what was written after the last completed flush (`lose=all`), or a block-aligned
//! prefix of it per zone and whole conventional blocks (`lose=random`), and never what a flush
//! made durable; vmm exits with 99 and prints the seed. Run by `make lab-test`.

use vmm_tests::{run_script_in_lab, values_of};

/// Guest, first boot: 1 MiB into zone 1 and an fsync (FLUSH 1, which completes), then 2 MiB more
/// into zone 1 and 16 KiB into the conventional zone 0, then an fsync: FLUSH 2, where the power
/// is cut. The data is `seq` text, so that the second boot can regenerate it.
const WRITE: &str = r#"
seq 1 2000000 | head -c 3145728 > /tmp/data
dd if=/tmp/data of=/dev/vda bs=1M count=1 seek=4 oflag=direct conv=notrunc,fsync 2>/dev/null
echo "first flush done"
dd if=/tmp/data of=/dev/vda bs=1M count=2 skip=1 seek=5 oflag=direct conv=notrunc 2>/dev/null
dd if=/tmp/data of=/dev/vda bs=4k count=4 oflag=direct conv=notrunc 2>/dev/null
dd if=/dev/null of=/dev/vda bs=512 count=0 conv=notrunc,fsync 2>/dev/null
sleep 5; echo "NOT CUT"
"#;

/// Guest, second boot: zone 1's write pointer, whether the data below it is the data written
/// (`prefix=ok`), and how many of the 32 conventional sectors written before the cut kept it
/// (each must be the new data or zeros, as before).
const CHECK: &str = r#"
seq 1 2000000 | head -c 3145728 > /tmp/data
wp=$(printf '%d' "$(blkzone report -o 8192 -c 1 /dev/vda | sed -n 's/.*wptr \(0x[0-9a-f]*\).*/\1/p')")
echo "wp=$wp"
if [ "$(dd if=/dev/vda bs=512 skip=8192 count=$wp 2>/dev/null | md5sum)" = "$(head -c $((wp * 512)) /tmp/data | md5sum)" ]; then echo prefix=ok; else echo prefix=bad; fi
zero=$(head -c 512 /dev/zero | md5sum)
kept=0 bad=0
for i in $(seq 0 31); do
    now=$(dd if=/dev/vda bs=512 skip=$i count=1 2>/dev/null | md5sum)
    if [ "$now" = "$(dd if=/tmp/data bs=512 skip=$i count=1 2>/dev/null | md5sum)" ]; then kept=$((kept + 1))
    elif [ "$now" != "$zero" ]; then bad=$((bad + 1)); fi
done
echo "conventional_kept=$kept conventional_mixed=$bad"
"#;

#[test]
#[ignore = "boots the guest in the lab; run by `make lab-test`"]
fn a_power_cut_loses_only_what_was_not_flushed() {
    let script = format!(
        r#"
cat > /tmp/write.sh <<'EOF'
{WRITE}
EOF
cat > /tmp/check.sh <<'EOF'
{CHECK}
EOF
script_disk /tmp/write.sh
script_disk /tmp/check.sh
set +e
for cut in lose=all lose=random,seed=1 lose=random,seed=2 lose=random,seed=3; do
    rm -f /tmp/z.img
    echo "== $cut"
    "$VMM" --kernel "$KERNEL" --initrd "$INITRD" --memory 512M \
        --zoned-disk /tmp/z.img,size=64M,zone-size=4M,conventional-zones=1,cache=volatile \
        --disk /tmp/write.sh,ro --power-cut flush=2,$cut -- bash /dev/vdb 2>/tmp/stderr
    echo "cut_status=$?"
    grep '^vmm: power cut' /tmp/stderr
    "$VMM" --kernel "$KERNEL" --initrd "$INITRD" --memory 512M --zoned-disk /tmp/z.img \
        --disk /tmp/check.sh,ro -- bash /dev/vdb
    echo "check_status=$?"
done
"#
    );
    let run = run_script_in_lab(900, &script);
    run.assert_ok();
    assert!(!run.stdout.contains("NOT CUT"), "{}", run.describe());
    assert_eq!(
        values_of(&run.stdout, "cut_status"),
        ["99"; 4],
        "{}",
        run.describe()
    );
    assert_eq!(
        values_of(&run.stdout, "check_status"),
        ["0"; 4],
        "{}",
        run.describe()
    );
    assert_eq!(
        values_of(&run.stdout, "prefix"),
        ["ok"; 4],
        "{}",
        run.describe()
    );
    assert_eq!(
        values_of(&run.stdout, "conventional_mixed"),
        ["0"; 4],
        "{}",
        run.describe()
    );
    let wps: Vec<u64> = values_of(&run.stdout, "wp")
        .iter()
        .map(|wp| wp.parse().unwrap())
        .collect();
    // Zone 1 starts at sector 8192; the first MiB (2048 sectors) was flushed, 4096 more not.
    assert_eq!(wps.len(), 4, "{}", run.describe());
    assert_eq!(wps[0], 2048, "lose=all keeps exactly the flushed MiB");
    for &wp in &wps[1..] {
        assert!((2048..=6144).contains(&wp), "{wps:?}");
    }
    let kept = values_of(&run.stdout, "conventional_kept");
    eprintln!("zone 1 write pointers after the cuts {wps:?}, conventional sectors kept {kept:?}");
    assert_eq!(kept[0], "0", "lose=all restores the conventional blocks");
    assert!(
        run.stdout.contains("seed 2:"),
        "the seed is printed: {}",
        run.describe()
    );
}

/// Guest for the timer and the signal: the flushed MiB, 2 MiB unflushed, then a marker and a
/// long sleep in which the power goes.
const WRITE_AND_WAIT: &str = r#"
seq 1 2000000 | head -c 3145728 > /tmp/data
dd if=/tmp/data of=/dev/vda bs=1M count=1 seek=4 oflag=direct conv=notrunc,fsync 2>/dev/null
dd if=/tmp/data of=/dev/vda bs=1M count=2 skip=1 seek=5 oflag=direct conv=notrunc 2>/dev/null
echo "ready for the cut"
sleep 300
echo "NOT CUT"
"#;

#[test]
#[ignore = "boots the guest in the lab; run by `make lab-test`"]
fn a_power_cut_comes_after_a_time_or_on_sigusr2() {
    let script = format!(
        r#"
cat > /tmp/write.sh <<'EOF'
{WRITE_AND_WAIT}
EOF
cat > /tmp/check.sh <<'EOF'
{CHECK}
EOF
script_disk /tmp/write.sh
script_disk /tmp/check.sh
set +e
disk=/tmp/z.img,size=64M,zone-size=4M,conventional-zones=1,cache=volatile
check() {{
    "$VMM" --kernel "$KERNEL" --initrd "$INITRD" --memory 512M --zoned-disk /tmp/z.img \
        --disk /tmp/check.sh,ro -- bash /dev/vdb
}}
echo "== after"
rm -f /tmp/z.img
"$VMM" --kernel "$KERNEL" --initrd "$INITRD" --memory 512M --zoned-disk $disk \
    --disk /tmp/write.sh,ro --power-cut after=60s -- bash /dev/vdb >/tmp/out 2>&1
echo "after_status=$? after_ready=$(grep -c 'ready for the cut' /tmp/out)"
grep '^vmm: power cut' /tmp/out
check
echo "== signal"
rm -f /tmp/z.img
"$VMM" --kernel "$KERNEL" --initrd "$INITRD" --memory 512M --zoned-disk $disk \
    --disk /tmp/write.sh,ro --power-cut signal,lose=random -- bash /dev/vdb >/tmp/out 2>&1 &
pid=$!
for i in $(seq 600); do grep -q 'ready for the cut' /tmp/out && break; sleep 0.5; done
kill -USR2 $pid
wait $pid
echo "signal_status=$?"
grep '^vmm: power cut' /tmp/out
check
"#
    );
    let run = run_script_in_lab(900, &script);
    run.assert_ok();
    assert!(!run.stdout.contains("NOT CUT"), "{}", run.describe());
    assert_eq!(
        values_of(&run.stdout, "after_status"),
        ["99"],
        "{}",
        run.describe()
    );
    assert_eq!(
        values_of(&run.stdout, "after_ready"),
        ["1"],
        "the cut came too early: {}",
        run.describe()
    );
    assert_eq!(
        values_of(&run.stdout, "signal_status"),
        ["99"],
        "{}",
        run.describe()
    );
    assert_eq!(
        values_of(&run.stdout, "prefix"),
        ["ok"; 2],
        "{}",
        run.describe()
    );
    let wps = values_of(&run.stdout, "wp");
    assert_eq!(
        wps.first().map(String::as_str),
        Some("2048"),
        "{}",
        run.describe()
    );
    let random: u64 = wps[1].parse().unwrap();
    assert!((2048..=6144).contains(&random), "{wps:?}");
    assert!(
        run.stdout.contains("on SIGUSR2, lose=random"),
        "{}",
        run.describe()
    );
    eprintln!("zone 1 write pointers after the timer and the signal: {wps:?}");
}
