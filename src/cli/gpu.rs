//! `sdgraph gpu`: which adapter sdgraph would use, its features and limits, and each tensor-core
//! kernel's self-test verdict (decided here if no cache file has it yet).

use gpu::tensor_cores::KernelVerdict;
use gpu::{Gpu, GpuOptions};

use super::EXIT_FAILED;

pub fn gpu(opts: &GpuOptions, json: bool) -> i32 {
    let verdicts = Gpu::new(opts).and_then(|g| {
        let v = g.tensor_core_verdicts()?.to_vec();
        Ok((g, v))
    });
    let (gpu, verdicts) = match verdicts {
        Ok(g) => g,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_FAILED;
        }
    };
    if json {
        print_json(&gpu, &verdicts);
    } else {
        print_text(&gpu, &verdicts);
    }
    0
}

/// The adapter's `GpuInfo`, plus `tensor_core_check`: per kernel name its verdict ("passed",
/// "failed", "unavailable", "off"), `summary` as the text shows it, `detail`, `cached`,
/// `stand_in` and `ms`.
fn print_json(gpu: &Gpu, verdicts: &[KernelVerdict]) {
    let mut v = serde_json::to_value(&gpu.info).unwrap_or_default();
    let mut check = serde_json::Map::new();
    for k in verdicts {
        let mut entry = serde_json::to_value(k).unwrap_or_default();
        entry["summary"] = k.summary().into();
        if let Some(o) = entry.as_object_mut() {
            o.remove("kernel");
        }
        check.insert(k.kernel.name().to_string(), entry);
    }
    v["tensor_core_check"] = check.into();
    println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
}

fn print_text(gpu: &Gpu, verdicts: &[KernelVerdict]) {
    let i = &gpu.info;
    let yes = |b: bool| if b { "yes" } else { "no" };
    println!("adapter:  {} ({}, {})", i.name, i.backend, i.device_type);
    if !i.driver.is_empty() {
        println!("driver:   {}", i.driver);
    }
    println!(
        "features: f16 {}, subgroups {}, tensor cores (coop matrix f16) {}, timestamps {}",
        yes(i.features.shader_f16),
        yes(i.features.subgroup),
        yes(i.features.coop_matrix_f16),
        yes(i.features.timestamps)
    );
    if !i.coop_matrix_configs.is_empty() {
        println!("coop matrix configs: {}", i.coop_matrix_configs.join(", "));
    }
    println!(
        "limits:   max buffer {} MiB, max storage binding {} MiB, workgroups/dim {}, invocations/workgroup {}, workgroup memory {} KiB",
        i.max_buffer_size >> 20,
        i.max_storage_buffer_binding_size >> 20,
        i.max_compute_workgroups_per_dimension,
        i.max_compute_invocations_per_workgroup,
        i.max_compute_workgroup_storage_size >> 10
    );
    println!("subgroup size: {}..={}", i.subgroup_size.0, i.subgroup_size.1);
    println!("tensor-core self-test (each coop kernel against the portable one):");
    for v in verdicts {
        println!("  {:<15} {}{}", v.kernel.name(), v.summary(), provenance(v));
    }
}

/// Where a verdict came from, for the text: the cache, or a test in this process (and how long).
fn provenance(v: &KernelVerdict) -> String {
    let stand_in = if v.stand_in { ", portable stand-in (test switch)" } else { "" };
    match (v.cached, v.ms) {
        (true, _) => format!(" (cached{stand_in})"),
        (false, Some(ms)) => format!(" (tested now, {ms:.1} ms{stand_in})"),
        (false, None) => String::new(),
    }
}
