//! The `switchyard` command line: its subcommands and what runs each, shared by the binaries
//! (`switchyard`, and `switchyard-count-allocations`, the same program with a counting
//! allocator), which differ only in their `#[global_allocator]`.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use switchyard_telemetry::TelemetryConfig;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::{autoscale, bench, cluster, gateway, infer, lab, loadgen, worker};

/// Load balancing and elastic scaling for gRPC model-serving services.
#[derive(Debug, Parser)]
#[command(name = "switchyard", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start a small cluster (workers of unequal speed behind the gateway), replay the bundled Azure trace through it, and write a report with plots.
    Cluster(cluster::ClusterArgs),
    /// Serve the KServe v2 gRPC API over one simulated LLM engine.
    Worker(worker::WorkerArgs),
    /// Balance gRPC requests over pools of model servers: a transparent proxy with routes by service and model.
    Gateway(gateway::GatewayArgs),
    /// Replay a trace or a synthetic pattern against a gRPC target and summarise the latencies.
    Loadgen(loadgen::LoadgenArgs),
    /// Send one prompt (unary or --stream) and print the answer, the time to first token and the decoded ORCA load report.
    Infer(infer::InferArgs),
    /// Run a policy-lab scenario: every balancing policy and an ideal dispatcher against simulated replicas, in virtual time.
    Lab(lab::LabArgs),
    /// Benchmark the gateway against nginx and HAProxy over real processes on loopback.
    Bench(bench::BenchArgs),
    /// Size a pool of workers from the gateways' metrics in Prometheus: the LLM-aware autoscaler, scaling a Kubernetes Deployment or StatefulSet.
    Autoscale(autoscale::AutoscaleArgs),
    /// A layer-4 TCP relay, the bench's floor for what a proxy costs (not a product).
    #[command(hide = true)]
    Relay(bench::relay::RelayArgs),
}

/// Completes on SIGTERM or Ctrl-C. The SIGTERM handler is installed at once, not on first poll,
/// so a SIGTERM that arrives while the worker starts up still drains it instead of killing it.
fn shutdown_signal() -> impl Future<Output = ()> {
    #[cfg(unix)]
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    async move {
        #[cfg(unix)]
        let term = async {
            match term.as_mut() {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let term = std::future::pending::<()>();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {},
            () = term => {},
        }
    }
}

/// Parses the command line, runs the command and says how it ended: what both binaries'
/// `main` do (`switchyard`, and `switchyard-count-allocations` with its counting allocator).
pub async fn run() -> ExitCode {
    // Before parsing: the `--policy` flags' help lists the registry.
    crate::register_policies();
    let mut cli = Cli::parse();
    // The servers' telemetry, from the standard OTEL_* variables: spans exported over OTLP when an
    // endpoint is set, nothing otherwise.
    let telemetry = match &mut cli.command {
        Command::Worker(args) => {
            let telemetry = switchyard_telemetry::init("switchyard-worker", &TelemetryConfig::from_env());
            (args.tracing, args.registry) = (telemetry.is_tracing(), Some(telemetry.registry().clone()));
            Some(telemetry)
        }
        Command::Gateway(args) => {
            let telemetry = switchyard_telemetry::init("switchyard-gateway", &TelemetryConfig::from_env());
            (args.tracing, args.registry) = (telemetry.is_tracing(), Some(telemetry.registry().clone()));
            Some(telemetry)
        }
        Command::Autoscale(args) => {
            let telemetry = switchyard_telemetry::init("switchyard-autoscale", &TelemetryConfig::from_env());
            args.registry = Some(telemetry.registry().clone());
            Some(telemetry)
        }
        _ => None,
    };
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::stderr().is_terminal())
                .with_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"))),
        )
        .with(telemetry.as_ref().and_then(|t| t.tracing_layer()))
        .init();
    if let Some(telemetry) = &telemetry {
        // The `metrics` facade's global recorder: series recorded anywhere reach `/metrics`.
        let _ = telemetry.registry().install();
    }
    for warning in telemetry.iter().flat_map(|t| t.warnings()) {
        tracing::warn!("telemetry: {warning}");
    }
    let result: Result<(), Box<dyn std::error::Error>> = match cli.command {
        Command::Worker(args) => worker::run(args, shutdown_signal()).await.map_err(Into::into),
        Command::Gateway(args) => gateway::run(args, shutdown_signal()).await.map_err(Into::into),
        Command::Autoscale(args) => autoscale::run(args, shutdown_signal()).await.map_err(Into::into),
        Command::Relay(args) => bench::relay::run(args, shutdown_signal()).await.map_err(Into::into),
        Command::Loadgen(args) => match loadgen::run(&args).await {
            Ok(report) => {
                println!("{}", report.summary());
                report.failure().map_or(Ok(()), |e| Err(e.into()))
            }
            Err(e) => Err(e.into()),
        },
        Command::Infer(args) => match infer::run(&args).await {
            Ok(result) => {
                println!("{}", result.summary());
                Ok(())
            }
            Err(e) => Err(e.into()),
        },
        Command::Cluster(args) => match cluster::run(&args, shutdown_signal()).await {
            Ok(report) => {
                println!("{}", report.summary());
                println!("\nreport: {}", args.out.display());
                Ok(())
            }
            Err(e) => Err(e.into()),
        },
        Command::Bench(args) => match bench::run(&args).await {
            Ok(report) => {
                println!("{}", report.summary());
                Ok(())
            }
            Err(e) => Err(e.into()),
        },
        Command::Lab(args) => match tokio::task::spawn_blocking(move || lab::run(&args)).await {
            Ok(Ok(report)) => {
                println!("{}", report.summary());
                Ok(())
            }
            Ok(Err(e)) => Err(e.into()),
            Err(e) => Err(e.into()),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
