//! `sdgraph gpu`: which adapter sdgraph would use, its features and limits.

use gpu::{Gpu, GpuOptions};

use super::EXIT_FAILED;

pub fn gpu(opts: &GpuOptions, json: bool) -> i32 {
    let gpu = match Gpu::new(opts) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_FAILED;
        }
    };
    let i = &gpu.info;
    if json {
        println!("{}", serde_json::to_string_pretty(i).unwrap_or_default());
        return 0;
    }
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
    0
}
