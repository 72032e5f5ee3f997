//! `ramdisk-build`: command-line front end of the ramdisk builder.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use ramdisk_build::build::{build, Options};

/// Build the Ferric ramdisk: DIR/vmlinuz, DIR/initramfs (reproducible gzip newc cpio) and
/// DIR/boot.ipxe.
#[derive(Debug, Parser)]
#[command(name = "ramdisk-build", version)]
struct Cli {
    /// Output directory.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Static ferric-agent binary [default: the workspace's
    /// x86_64-unknown-linux-musl release build, built with cargo if missing].
    #[arg(long, value_name = "PATH")]
    agent: Option<PathBuf>,
    /// Static busybox [default: /bin/busybox if static, else Debian's busybox-static].
    #[arg(long, value_name = "PATH")]
    busybox: Option<PathBuf>,
    /// A linux-image .deb to take the kernel and modules from.
    #[arg(long, value_name = "FILE", conflicts_with = "kernel_dir")]
    kernel_deb: Option<PathBuf>,
    /// An extracted linux-image package (boot/vmlinuz-V and lib/modules/V).
    /// Default: download Debian's current linux-image-amd64 dependency.
    #[arg(long, value_name = "DIR")]
    kernel_dir: Option<PathBuf>,
    /// Download and extraction cache [default: <workspace>/target/ramdisk-cache].
    #[arg(long, value_name = "DIR")]
    cache: Option<PathBuf>,
    /// PEM bundle installed as /etc/ssl/certs/ca-certificates.crt [default: built from
    /// Debian's ca-certificates package].
    #[arg(long, value_name = "FILE")]
    ca_bundle: Option<PathBuf>,
    /// Ship this module (and its dependencies) too; repeatable.
    #[arg(long = "module", value_name = "NAME")]
    modules: Vec<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The crate lives in <workspace>/ramdisk-build.
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    let opts = Options {
        out: cli.out,
        agent: cli.agent,
        busybox: cli.busybox,
        kernel_deb: cli.kernel_deb,
        kernel_dir: cli.kernel_dir,
        cache: cli
            .cache
            .unwrap_or_else(|| workspace.join("target/ramdisk-cache")),
        ca_bundle: cli.ca_bundle,
        extra_modules: cli.modules,
        workspace,
    };
    match build(&opts) {
        Ok(report) => {
            print!("{}", report.summary());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ramdisk-build: {e:#}");
            ExitCode::FAILURE
        }
    }
}
