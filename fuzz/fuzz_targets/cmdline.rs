//! The kernel command line: `KernelParams::parse` then `Config::resolve`, with the default
//! flags (what the ramdisk runs with) and with `--standalone --agent-token`, which skips the
//! API URL requirement so the fuzzer reaches every later parameter. Errors are fine; a panic
//! is a bug (a bad `ipa-*` parameter must be reported, not kill the agent before it starts).
//!
//! Input: the command line, UTF-8 (invalid bytes become U+FFFD, as `read_to_string` of
//! /proc/cmdline would refuse them but a `--cmdline-file` could hold anything).
#![no_main]

use ferric_agent::config::{Cli, Config, KernelParams};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let line = String::from_utf8_lossy(data);
    let k = KernelParams::parse(&line);
    // Every parsed key is retrievable, and `get` never returns an empty value.
    for (key, value) in &k.0 {
        assert_eq!(k.get(key), (!value.is_empty()).then_some(value.as_str()));
    }
    let _ = Config::resolve(&Cli::default(), k.clone());
    let standalone = Cli {
        standalone: true,
        agent_token: Some("t".into()),
        ..Default::default()
    };
    if let Ok(c) = Config::resolve(&standalone, k) {
        assert!(c.standalone);
        for u in &c.api_urls {
            assert!(u.starts_with("http://") || u.starts_with("https://"), "{u}");
        }
        assert!(c.advertise_protocol == "http" || c.advertise_protocol == "https");
    }
});
