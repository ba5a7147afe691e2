//! `sdgraph bench kernels`: achieved TFLOP/s of matmul and conv at the
//! shapes of the SD 1.5 UNet at 512x512 (and 4096^3).

use engine::gpu::bench::{BenchSize, bench_kernels};
use engine::gpu::{Gpu, GpuOptions};

use super::EXIT_FAILED;

pub fn kernels(adapter: Option<String>, small: bool, json: bool) -> i32 {
    let gpu = match Gpu::new(&GpuOptions { adapter, ..Default::default() }) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_FAILED;
        }
    };
    eprintln!("adapter: {} ({})", gpu.info.name, gpu.info.backend);
    let size = if small { BenchSize::Small } else { BenchSize::Full };
    let results = match bench_kernels(&gpu, size) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_FAILED;
        }
    };
    if json {
        let v = serde_json::json!({ "adapter": gpu.info.name, "backend": gpu.info.backend, "results": results });
        println!("{v}");
    } else {
        println!("{:<30} {:<36} {:>10} {:>9}", "kernel", "shape", "ms", "TFLOP/s");
        for r in results {
            println!("{:<30} {:<36} {:>10.3} {:>9.3}", r.name, r.shape, r.ms, r.tflops);
        }
    }
    0
}
