//! Certificate issuance benchmark: how many leaves the CA issues per second on one core.
//!
//! Makes `--leaves` certificate signing requests first (each with its own P-256 key, as
//! proxies make them; not measured), then on one thread does the CA's part of each
//! `Identity.Certify` call: read and check the request (`CheckedCsr::parse`: parse, verify its
//! signature, read the SPIFFE ID) and issue the leaf (`sign_checked`). It reports leaves per second
//! of the thread's CPU time (user + system, from /proc/thread-self/stat), for the whole call and
//! for issuing alone, against the target of 5,000 a second per core. Prints markdown to
//! stdout.
//!
//! Usage: cargo run --release -p weft-tests --bin issuance -- [--leaves N] [--clock-ticks T]

use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use clap::Parser;
use weft_ca::{CertificateAuthority, CheckedCsr, LeafKey};
use weft_core::{Identity, TrustDomain};

/// The target, leaves a second per core.
const TARGET: f64 = 5_000.0;

/// Certificate issuance benchmark: the CA's work per Certify call on one core.
#[derive(Debug, Parser)]
#[command(name = "issuance")]
struct Args {
    /// Leaves to issue (each run of the measured loop).
    #[arg(long, default_value_t = 20_000)]
    leaves: u32,
    /// Clock ticks per second of /proc/<pid>/stat (`getconf CLK_TCK`).
    #[arg(long, default_value_t = 100)]
    clock_ticks: u32,
}

/// This thread's CPU time so far.
fn thread_cpu(ticks: u32) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string("/proc/thread-self/stat")?;
    // The command name (field 2) may hold spaces; the fields after its ')' are fixed.
    let rest = stat
        .rsplit_once(')')
        .context("odd /proc/thread-self/stat")?
        .1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
    let utime: u64 = fields.get(11).context("no utime")?.parse()?;
    let stime: u64 = fields.get(12).context("no stime")?.parse()?;
    Ok(Duration::from_secs_f64(
        (utime + stime) as f64 / f64::from(ticks),
    ))
}

/// Leaves per CPU second and per wall second of `f` run over every request.
fn measure(
    ticks: u32,
    csrs: &[(Vec<u8>, Identity)],
    mut f: impl FnMut(&[u8], &Identity) -> anyhow::Result<()>,
) -> anyhow::Result<(f64, f64)> {
    let (cpu0, wall0) = (thread_cpu(ticks)?, Instant::now());
    for (csr, id) in csrs {
        f(csr, id)?;
    }
    let (cpu, wall) = (thread_cpu(ticks)? - cpu0, wall0.elapsed());
    let n = csrs.len() as f64;
    ensure!(cpu > Duration::ZERO, "the run was too short to measure");
    Ok((n / cpu.as_secs_f64(), n / wall.as_secs_f64()))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let td = TrustDomain::new("weft.bench")?;
    let ca = CertificateAuthority::generate_ephemeral(&td, Duration::from_secs(24 * 3600))?;
    eprintln!("making {} requests", args.leaves);
    let csrs = (0..args.leaves)
        .map(|i| {
            let id = Identity::new(td.clone(), "bench", format!("sa-{i}"))?;
            Ok((LeafKey::generate()?.csr(&id)?, id))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;

    eprintln!("issuing");
    // A warm-up pass, then the two measured ones.
    measure(args.clock_ticks, &csrs[..csrs.len().min(500)], |csr, id| {
        ca.sign_csr(csr, id)?;
        Ok(())
    })?;
    let (call_cpu, call_wall) = measure(args.clock_ticks, &csrs, |csr, id| {
        let checked = CheckedCsr::parse(csr)?;
        ensure!(
            checked.identity() == id,
            "the request asks for {:?}",
            checked
        );
        ca.sign_checked(&checked, id)?;
        Ok(())
    })?;
    let checked = csrs
        .iter()
        .map(|(csr, _)| CheckedCsr::parse(csr))
        .collect::<Result<Vec<_>, _>>()?;
    let mut next = checked.iter();
    let (sign_cpu, sign_wall) = measure(args.clock_ticks, &csrs, |_, id| {
        let csr = next.next().context("fewer checked requests")?;
        ca.sign_checked(csr, id)?;
        Ok(())
    })?;

    let verdict = |v: f64| if v >= TARGET { "pass" } else { "FAIL" };
    println!("## Certificate issuance, one core\n");
    println!(
        "{} leaves (ECDSA P-256), each request with its own key; CPU time of the issuing thread.\n",
        args.leaves
    );
    println!("| work per leaf | leaves per CPU second | per wall second | target | result |");
    println!("|---|---|---|---|---|");
    println!(
        "| Certify's CA work: `CheckedCsr::parse` + `sign_checked` | {call_cpu:.0} | {call_wall:.0} | ≥ {TARGET:.0} | {} |",
        verdict(call_cpu)
    );
    println!(
        "| issuing alone (`sign_checked` of a checked request) | {sign_cpu:.0} | {sign_wall:.0} | | |"
    );
    Ok(())
}
