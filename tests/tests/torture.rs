//! Crash consistency of the zoned image under SIGKILL, repeated: each iteration boots a guest that
//! writes 64 KiB chunks through several zones, making them durable with a FLUSH (fsync) every
//! few chunks, kills the VMM with SIGKILL at a random moment, reopens the image in a new VMM and
//! checks that no write pointer runs ahead of durable data (everything below each write pointer
//! is exactly what was written) and that every chunk reported flushed is below the write pointer.
//! Before writing, the guest fills each zone with an earlier epoch, flushes and resets the zones,
//! and it pauses once for two seconds during the run, so that the idle reclaim of the reset zones
//! (punching above each write pointer) runs among the writes, and sometimes as the kill lands.
//!
//! `VMM_TORTURE_ITERATIONS` iterations (default 3, what `make lab-test` runs; `make torture` runs
//! 50), all in one lab boot. The kill moments come from a seed, printed first; set
//! `VMM_TORTURE_SEED` to replay a run.

use std::time::{SystemTime, UNIX_EPOCH};

use vmm_tests::{run_script_in_lab_with_progress, values_of, LabRun};

/// Sequential zones the writer fills (zones 1 to 3; zone 0 is conventional). Zones are small
/// (1 MiB) so that an iteration crosses zone boundaries within a few dozen writes.
const ZONES: u64 = 3;
/// 64 KiB chunks per 1 MiB zone.
const CHUNKS_PER_ZONE: u64 = 16;
const CHUNKS: u64 = ZONES * CHUNKS_PER_ZONE;
/// Sectors per zone.
const ZONE_SECTORS: u64 = 2048;
/// The image: zone 0 conventional, then the sequential zones.
const IMAGE_OPTIONS: &str = "size=16M,zone-size=1M,conventional-zones=1";
const DEFAULT_ITERATIONS: u64 = 3;

/// splitmix64: a small, seedable generator, so that a seed replays the same kill moments.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform enough in `0..bound` for a test plan.
    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }
}

/// When one iteration kills the VMM: after the guest reported writing chunk `after_chunk`, plus
/// `delay_ms`; the guest flushes after every `flush_every` chunks, and pauses (the disk idle, so
/// that it reclaims) after chunk `pause_after`.
#[derive(Debug, Clone, Copy)]
struct Kill {
    after_chunk: u64,
    delay_ms: u64,
    flush_every: u64,
    pause_after: u64,
}

fn plan(seed: u64, iterations: u64) -> Vec<Kill> {
    let mut random = Random(seed);
    (0..iterations)
        .map(|_| Kill {
            // Leave room so that most kills land before the writer finishes.
            after_chunk: random.below(CHUNKS - 8),
            delay_ms: random.below(300),
            flush_every: 1 + random.below(4),
            pause_after: random.below(CHUNKS - 8),
        })
        .collect()
}

fn env_number(name: &str) -> Option<u64> {
    let text = std::env::var(name).ok()?;
    Some(
        text.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={text:?} is not a number")),
    )
}

/// The guest's writer (`bash /dev/vdb FLUSH_EVERY PAUSE_AFTER`): first an earlier epoch into
/// every zone, flushed, then the zones reset; then chunk i goes to zone 1 + i/16 at the write
/// pointer; each sector of it is a 512-byte line naming its chunk and sector, so any misplaced
/// or stale sector shows. "wrote I" after each chunk, "flushed I" once chunks 0..=I are durable.
/// After chunk PAUSE_AFTER it sleeps two seconds: the device reclaims after one idle second.
const WRITER: &str = r#"
every=$1
pause=$2
awk 'BEGIN { for (s = 0; s < 128; s++) printf "%-511s
", "earlier epoch sector " s }' > /tmp/old
for z in $(seq 1 @ZONES@); do
    dd if=/tmp/old of=/dev/vda bs=64k seek=$((z * @CHUNKS_PER_ZONE@)) oflag=direct conv=fsync 2>/dev/null || { echo "write 0 failed (the earlier epoch)"; exit 1; }
done
blkzone reset -o @ZONE_SECTORS@ -c @ZONES@ /dev/vda || { echo "write 0 failed (the reset)"; exit 1; }
i=0
while [ $i -lt @CHUNKS@ ]; do
    awk -v c=$i 'BEGIN { for (s = 0; s < 128; s++) printf "%-511s\n", "chunk " c " sector " s }' > /tmp/c
    if [ $(( (i + 1) % every )) -eq 0 ]; then
        dd if=/tmp/c of=/dev/vda bs=64k seek=$((@CHUNKS_PER_ZONE@ + i)) oflag=direct conv=fsync 2>/dev/null || { echo "write $i failed"; exit 1; }
        echo "wrote $i"; echo "flushed $i"
    else
        dd if=/tmp/c of=/dev/vda bs=64k seek=$((@CHUNKS_PER_ZONE@ + i)) oflag=direct 2>/dev/null || { echo "write $i failed"; exit 1; }
        echo "wrote $i"
    fi
    [ $i -eq "$pause" ] && sleep 2
    i=$((i + 1))
done
echo "writer finished"
"#;

/// The guest's checker, on the reopened image: for each written zone, its condition and write
/// pointer, and whether the data below the write pointer is exactly what the writer wrote.
const CHECKER: &str = r#"
for z in $(seq 1 @ZONES@); do
    line=$(blkzone report -o $((z * @ZONE_SECTORS@)) -c 1 /dev/vda)
    cond=$(echo "$line" | sed -n 's/.*zcond: *\([0-9]*\).*/\1/p')
    wp=$(printf '%d' "$(echo "$line" | sed -n 's/.*wptr \(0x[0-9a-f]*\).*/\1/p')")
    [ "$cond" = 14 ] && wp=@ZONE_SECTORS@
    intact=yes
    if [ $wp -gt 0 ]; then
        first=$(( (z - 1) * @CHUNKS_PER_ZONE@ )); n=$(( (wp + 127) / 128 ))
        awk -v first=$first -v n=$n 'BEGIN { for (c = first; c < first + n; c++) for (s = 0; s < 128; s++) printf "%-511s\n", "chunk " c " sector " s }' > /tmp/want
        dd if=/dev/vda of=/tmp/got bs=512 skip=$((z * @ZONE_SECTORS@)) count=$wp iflag=direct 2>/dev/null
        cmp -n $((wp * 512)) /tmp/want /tmp/got > /dev/null || intact=no
    fi
    echo "zone-$z=$cond:$wp:$intact"
done
"#;

/// The lab script: one fresh image per iteration, written, killed and checked. Prints one
/// `iteration I ...` line per iteration with `KEY=VALUE` words.
fn lab_script(kills: &[Kill]) -> String {
    let substitute = |text: &str| {
        text.replace("@ZONE_SECTORS@", &ZONE_SECTORS.to_string())
            .replace("@ZONES@", &ZONES.to_string())
            .replace("@CHUNKS@", &CHUNKS.to_string())
            .replace("@CHUNKS_PER_ZONE@", &CHUNKS_PER_ZONE.to_string())
    };
    let plan: Vec<String> = kills
        .iter()
        .map(|k| {
            format!(
                "{}:{}:{}:{}",
                k.after_chunk, k.delay_ms, k.flush_every, k.pause_after
            )
        })
        .collect();
    format!(
        r#"
cat > /tmp/writer.sh <<'EOF'
{writer}
EOF
cat > /tmp/checker.sh <<'EOF'
{checker}
EOF
script_disk /tmp/writer.sh; script_disk /tmp/checker.sh
plan=({plan})
n=${{#plan[@]}}
for i in "${{!plan[@]}}"; do
    IFS=: read -r after delay every pause <<< "${{plan[$i]}}"
    rm -f /tmp/z.img
    start=$SECONDS
    "$VMM" --kernel "$KERNEL" --initrd "$INITRD" --zoned-disk /tmp/z.img,{IMAGE_OPTIONS} \
        --disk /tmp/writer.sh,ro -- bash /dev/vdb "$every" "$pause" > /tmp/writer.out 2>&1 &
    pid=$!
    for _ in $(seq 1200); do
        grep -qw "wrote $after" /tmp/writer.out && break
        grep -q "writer finished\|write [0-9]* failed" /tmp/writer.out && break
        kill -0 $pid 2>/dev/null || break
        sleep 0.05
    done
    sleep "$(printf '0.%03d' "$delay")"
    kill -KILL $pid 2>/dev/null || true
    wait $pid 2>/dev/null || true
    written=$(grep -o "wrote [0-9]*" /tmp/writer.out | tail -1 | cut -d' ' -f2 || true)
    flushed=$(grep -o "flushed [0-9]*" /tmp/writer.out | tail -1 | cut -d' ' -f2 || true)
    finished=no; grep -q "writer finished" /tmp/writer.out && finished=yes
    failed=no; grep -q "write [0-9]* failed" /tmp/writer.out && failed=yes
    set +e
    "$VMM" --kernel "$KERNEL" --initrd "$INITRD" --zoned-disk /tmp/z.img --disk /tmp/checker.sh,ro -- bash /dev/vdb > /tmp/checker.out 2>&1
    checked=$?
    set -e
    echo "iteration $((i + 1))/$n: plan=${{plan[$i]}} written=${{written:--1}} flushed=${{flushed:--1}} finished=$finished failed=$failed checker=$checked $(grep -o 'zone-[0-9]*=[^ [:space:]]*' /tmp/checker.out | tr '\n' ' ')seconds=$((SECONDS - start))"
    [ "$checked" = 0 ] || {{ echo "checker output:"; cat /tmp/checker.out; }}
done
"#,
        writer = substitute(WRITER),
        checker = substitute(CHECKER),
        plan = plan.join(" "),
    )
}

/// A zone as the checker saw it: condition, write pointer (sectors from its start), whether the
/// data below the write pointer is intact.
struct ZoneSeen {
    cond: u32,
    wp: u64,
    intact: bool,
}

fn parse_zone(value: &str) -> Option<ZoneSeen> {
    let mut parts = value.split(':');
    Some(ZoneSeen {
        cond: parts.next()?.parse().ok()?,
        wp: parts.next()?.parse().ok()?,
        intact: parts.next()? == "yes",
    })
}

/// Checks one iteration's line; returns why it failed, if it did.
fn check_iteration(line: &str) -> Result<(), String> {
    let one = |key: &str| -> Result<String, String> {
        match values_of(line, key).as_slice() {
            [value] => Ok(value.clone()),
            other => Err(format!("expected one {key}=, found {other:?}")),
        }
    };
    if one("checker")? != "0" || one("failed")? != "no" {
        return Err("a guest write or the checker failed".into());
    }
    let flushed: i64 = one("flushed")?
        .parse()
        .map_err(|e| format!("flushed: {e}"))?;
    let mut durable_chunks = 0;
    let mut earlier_zone_full = true;
    for zone in 1..=ZONES {
        let seen = parse_zone(&one(&format!("zone-{zone}"))?)
            .ok_or_else(|| format!("zone {zone}: unreadable"))?;
        if !seen.intact {
            return Err(format!("zone {zone}: data below the write pointer is not what was written (write pointer ahead of durable data)"));
        }
        if seen.wp > 0 && !earlier_zone_full {
            return Err(format!(
                "zone {zone}: written while an earlier zone is not full"
            ));
        }
        // Zones that were open come back closed (4) or stay empty (1) or full (14).
        if ![1, 4, 14].contains(&seen.cond) {
            return Err(format!(
                "zone {zone}: condition {} after the crash",
                seen.cond
            ));
        }
        earlier_zone_full = seen.wp == ZONE_SECTORS;
        durable_chunks += seen.wp / 128;
    }
    if (durable_chunks as i64) <= flushed {
        return Err(format!(
            "chunk {flushed} was flushed but only {durable_chunks} chunks are below the write pointers"
        ));
    }
    Ok(())
}

#[test]
#[ignore = "boots the guest in the lab; run by `make lab-test` (3 iterations) and `make torture` (50)"]
fn sigkill_torture_loses_no_flushed_data_and_no_write_pointer_runs_ahead() {
    let iterations = env_number("VMM_TORTURE_ITERATIONS").unwrap_or(DEFAULT_ITERATIONS);
    assert!(iterations > 0, "VMM_TORTURE_ITERATIONS must be at least 1");
    let seed = env_number("VMM_TORTURE_SEED").unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    eprintln!(
        "torture: {iterations} iterations, seed {seed} (replay with VMM_TORTURE_SEED={seed})"
    );
    let kills = plan(seed, iterations);
    // Each iteration is two guest boots and up to 48 small writes: 15-20 s of lab time, measured
    // at up to 70 s of wall time on a busy 2-core host.
    let timeout = 120 + 90 * iterations as u32;
    let run: LabRun =
        run_script_in_lab_with_progress(timeout, &lab_script(&kills), Some("iteration "));
    assert_eq!(run.status, Some(0), "seed {seed}\n{}", run.describe());
    let lines: Vec<&str> = run
        .stdout
        .lines()
        .filter(|l| l.starts_with("iteration "))
        .collect();
    assert_eq!(
        lines.len() as u64,
        iterations,
        "seed {seed}: not every iteration reported\n{}",
        run.describe()
    );
    let failures: Vec<String> = lines
        .iter()
        .filter_map(|line| {
            check_iteration(line)
                .err()
                .map(|why| format!("{line}\n  -> {why}"))
        })
        .collect();
    assert!(
        failures.is_empty(),
        "seed {seed} (replay with VMM_TORTURE_SEED={seed}):\n{}\n{}",
        failures.join("\n"),
        run.describe()
    );
    // A kill that always came after the writer finished or before it wrote anything would test
    // nothing: most iterations must have been cut mid-stream with data flushed.
    let mid_stream = lines
        .iter()
        .filter(|l| l.contains("finished=no") && !l.contains("flushed=-1"))
        .count();
    assert!(
        mid_stream * 2 >= lines.len(),
        "seed {seed}: only {mid_stream} of {} kills landed mid-stream\n{}",
        lines.len(),
        run.describe()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_replays_the_same_plan() {
        let a = plan(42, 10);
        let b = plan(42, 10);
        let c = plan(43, 10);
        let key = |p: &[Kill]| -> Vec<(u64, u64, u64, u64)> {
            p.iter()
                .map(|k| (k.after_chunk, k.delay_ms, k.flush_every, k.pause_after))
                .collect()
        };
        assert_eq!(key(&a), key(&b));
        assert_ne!(key(&a), key(&c));
        assert!(a
            .iter()
            .all(|k| k.after_chunk < CHUNKS && (1..=4).contains(&k.flush_every)));
    }

    #[test]
    fn iteration_lines_are_judged() {
        let good = "iteration 1/3: plan=10:5:2 written=10 flushed=9 finished=no failed=no \
                    checker=0 zone-1=4:1280:yes zone-2=1:0:yes zone-3=1:0:yes seconds=9";
        assert_eq!(check_iteration(good), Ok(()));
        let lost = good.replace("zone-1=4:1280", "zone-1=4:1152");
        assert!(check_iteration(&lost)
            .unwrap_err()
            .contains("chunk 9 was flushed"));
        let corrupt = good.replace("1280:yes", "1280:no");
        assert!(check_iteration(&corrupt)
            .unwrap_err()
            .contains("not what was written"));
        let gap = good.replace("zone-2=1:0", "zone-2=4:128");
        assert!(check_iteration(&gap).unwrap_err().contains("earlier zone"));
        let full = "iteration 2/3: plan=20:5:1 written=21 flushed=20 finished=no failed=no \
                    checker=0 zone-1=14:2048:yes zone-2=4:640:yes zone-3=1:0:yes seconds=9";
        assert_eq!(check_iteration(full), Ok(()));
        assert!(check_iteration(&full.replace("checker=0", "checker=1")).is_err());
    }
}
