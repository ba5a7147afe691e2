//! The kernel profiler (`--profile`) on the test adapter: a known sequence of
//! matmuls and convolutions is reported under the right kernel names with the
//! right call counts and positive times, on the GPU-timestamp clock (when the
//! adapter has it) and on the CPU queue-wait fallback; profiling changes no
//! result; more passes than one query set holds are all counted; with
//! profiling off there is no profiler.

use gpu::ops::conv2d::conv2d;
use gpu::ops::matmul::{MatmulOptions, matmul};
use gpu::profile::{ProfileClock, ProfileReport};
use gpu::testing::{random, shared_gpu};
use gpu::{DType, Gpu, GpuOptions, Tensor};

fn open(cpu_clock: bool) -> Option<Gpu> {
    shared_gpu()?;
    Some(Gpu::new(&GpuOptions { profile: true, profile_cpu_clock: cpu_clock, ..Default::default() }).unwrap())
}

fn upload(gpu: &Gpu, shape: &[usize], seed: u64) -> Tensor {
    let n = shape.iter().product();
    gpu.upload(&random(n, seed, -1.0, 1.0), shape, DType::F32).unwrap()
}

/// 3 matmuls (one of them linear-style, `b` transposed) and 2 convolutions; returns the last outputs.
fn sequence(gpu: &Gpu) -> (Vec<f32>, Vec<f32>) {
    let a = upload(gpu, &[37, 20], 1);
    let b = upload(gpu, &[20, 19], 2);
    let bt = upload(gpu, &[19, 20], 3);
    let m1 = matmul(gpu, &a, &b, &MatmulOptions::default()).unwrap();
    let m2 = matmul(gpu, &a, &bt, &MatmulOptions { transpose_b: true, ..Default::default() }).unwrap();
    let m3 = matmul(gpu, &m1.reshape(&[37, 19]).unwrap(), &bt, &MatmulOptions::default()).unwrap();
    let x = upload(gpu, &[1, 3, 9, 7], 4);
    let w = upload(gpu, &[5, 3, 3, 3], 5);
    let w2 = upload(gpu, &[2, 5, 1, 1], 6);
    let c1 = conv2d(gpu, &x, &w, None, 1, 1).unwrap();
    let c2 = conv2d(gpu, &c1, &w2, None, 1, 0).unwrap();
    drop(m2);
    (gpu.download(&m3).unwrap(), gpu.download(&c2).unwrap())
}

fn kernel<'a>(r: &'a ProfileReport, name: &str) -> &'a gpu::profile::KernelTime {
    r.kernels.iter().find(|k| k.name == name).unwrap_or_else(|| panic!("no {name} in {r:?}"))
}

fn check_report(r: &ProfileReport) {
    let names: Vec<&str> = r.kernels.iter().map(|k| k.name.as_str()).collect();
    assert_eq!(names.len(), 2, "only matmul and conv2d ran: {names:?}");
    assert_eq!(kernel(r, "matmul").calls, 3);
    assert_eq!(kernel(r, "conv2d").calls, 2);
    assert_eq!(r.calls, 5);
    for k in &r.kernels {
        assert!(k.total_ms > 0.0, "{k:?}");
        assert!(k.share > 0.0 && k.share <= 1.0, "{k:?}");
    }
    let share: f64 = r.kernels.iter().map(|k| k.share).sum();
    assert!((share - 1.0).abs() < 1e-9, "shares sum to {share}");
    let total: f64 = r.kernels.iter().map(|k| k.total_ms).sum();
    assert!((total - r.total_ms).abs() < 1e-9 * total.max(1.0));
    // Most time first.
    assert!(r.kernels[0].total_ms >= r.kernels[1].total_ms);
    let text = r.render(10);
    assert!(text.contains("matmul") && text.contains("conv2d") && text.contains("5 kernel calls"), "{text}");
}

#[test]
fn timestamps_report_each_kernel_with_its_calls_and_change_no_result() {
    let Some(gpu) = open(false) else { return };
    let gpu = &gpu;
    let p = gpu.profiler().expect("profiling on");
    if !gpu.features().timestamps {
        assert_eq!(p.clock(), ProfileClock::CpuQueueWait);
        return; // the fallback is tested below
    }
    assert_eq!(p.clock(), ProfileClock::GpuTimestamps);
    let (m, c) = sequence(gpu);
    let r = gpu.profile_report().unwrap().unwrap();
    check_report(&r);
    assert!(r.render(10).contains("GPU timestamps"));

    // Profiling records timestamps only: the results are those of an unprofiled GPU.
    let plain = Gpu::new(&GpuOptions::default()).unwrap();
    assert!(plain.profiler().is_none());
    assert!(plain.profile_report().unwrap().is_none());
    assert_eq!(sequence(&plain), (m, c));

    // After a reset only new work counts.
    p.reset();
    let a = upload(gpu, &[4, 4], 7);
    let _ = gpu.download(&matmul(gpu, &a, &a, &MatmulOptions::default()).unwrap()).unwrap();
    let r = gpu.profile_report().unwrap().unwrap();
    assert_eq!((r.calls, r.kernels.len(), r.kernels[0].name.as_str()), (1, 1, "matmul"));
}

#[test]
fn cpu_fallback_times_each_pass_and_says_so() {
    let Some(gpu) = open(true) else { return };
    assert_eq!(gpu.profiler().unwrap().clock(), ProfileClock::CpuQueueWait);
    sequence(&gpu);
    let r = gpu.profile_report().unwrap().unwrap();
    check_report(&r);
    assert!(r.render(10).contains("no timestamp queries"), "{}", r.render(10));
}

#[test]
fn more_passes_than_one_query_set_holds_are_all_counted() {
    let Some(gpu) = open(false) else { return };
    if !gpu.features().timestamps {
        return;
    }
    let a = upload(&gpu, &[2, 2], 8);
    // 2500 passes in one encoder: past the 2048 passes of a query set, without a submit between.
    let mut x = a.clone();
    for _ in 0..2500 {
        x = matmul(&gpu, &x, &a, &MatmulOptions::default()).unwrap();
    }
    gpu.sync().unwrap();
    let r = gpu.profile_report().unwrap().unwrap();
    assert_eq!(r.calls, 2500);
    assert_eq!(kernel(&r, "matmul").calls, 2500);
    assert!(r.total_ms > 0.0);
}
