//! Every shader and every variant parses and validates with naga, without a
//! GPU; the registry and the `shaders/` folder agree both ways; each entry
//! point uses exactly the bindings its launcher passes.

use std::collections::BTreeSet;

use gpu::shaders::{Access, LIBS, SHADERS, Variant};
use naga::valid::{Capabilities, ValidationFlags, Validator};

fn shader_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shaders")
}

/// What a variant may use: only what it needs, so a stray `f16` in an f32
/// variant fails here.
pub(crate) fn capabilities(v: Variant) -> Capabilities {
    match v {
        Variant::F32 => Capabilities::SUBGROUP,
        Variant::F16 => Capabilities::SUBGROUP | Capabilities::SHADER_FLOAT16,
        Variant::CoopF16 => Capabilities::SUBGROUP | Capabilities::SHADER_FLOAT16 | Capabilities::COOPERATIVE_MATRIX,
    }
}

#[test]
fn registry_and_shader_folder_agree_both_ways() {
    let on_disk: BTreeSet<String> = std::fs::read_dir(shader_dir())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".wgsl"))
        .collect();
    let registered: BTreeSet<String> = SHADERS.iter().map(|s| s.file.to_string()).collect();
    assert!(!on_disk.is_empty(), "no shaders found in {}", shader_dir().display());
    assert_eq!(on_disk, registered, "shaders/ and gpu::shaders::SHADERS differ");
    for s in SHADERS {
        let text = std::fs::read_to_string(shader_dir().join(s.file)).unwrap();
        assert_eq!(text, s.body, "{} is stale in the binary", s.file);
        assert_eq!(SHADERS.iter().filter(|o| o.family == s.family).count(), 1, "{:?} registered twice", s.family);
    }
}

#[test]
fn shared_snippets_and_lib_folder_agree_and_every_snippet_is_used() {
    let on_disk: BTreeSet<String> = std::fs::read_dir(shader_dir().join("lib"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".wgsl"))
        .collect();
    let registered: BTreeSet<String> = LIBS.iter().map(|(n, _)| format!("{n}.wgsl")).collect();
    assert_eq!(on_disk, registered, "shaders/lib/ and gpu::shaders::LIBS differ");
    for (name, text) in LIBS {
        let file = std::fs::read_to_string(shader_dir().join("lib").join(format!("{name}.wgsl"))).unwrap();
        assert_eq!(&file, text, "{name} is stale in the binary");
        assert!(SHADERS.iter().any(|s| s.libs.contains(name)), "snippet {name} is used by no shader");
    }
    for s in SHADERS {
        for lib in s.libs {
            assert!(LIBS.iter().any(|(n, _)| n == lib), "{} names unknown snippet {lib}", s.file);
        }
    }
}

#[test]
fn every_shader_variant_validates_and_declares_its_launcher_bindings() {
    let mut checked = 0;
    for s in SHADERS {
        for &v in s.variants {
            let src = s.source(v);
            let module = naga::front::wgsl::parse_str(&src)
                .unwrap_or_else(|e| panic!("{} {v:?} does not parse:\n{}", s.file, e.emit_to_string(&src)));
            let info = Validator::new(ValidationFlags::all(), capabilities(v))
                .validate(&module)
                .unwrap_or_else(|e| panic!("{} {v:?} is invalid:\n{}", s.file, e.emit_to_string(&src)));
            let mut constants = naga::back::PipelineConstants::default();
            for (k, val) in s.overrides {
                constants.insert(k.to_string(), *val);
            }
            for entry in s.entries {
                let index = module
                    .entry_points
                    .iter()
                    .position(|e| e.name == entry.name)
                    .unwrap_or_else(|| panic!("{} has no entry point {}", s.file, entry.name));
                // Resolving overrides checks the variant as a pipeline would build it.
                let (resolved, _) = naga::back::pipeline_constants::process_overrides(
                    &module,
                    &info,
                    Some((naga::ShaderStage::Compute, entry.name)),
                    &constants,
                )
                .unwrap_or_else(|e| panic!("{} {v:?} {}: overrides: {e}", s.file, entry.name));
                Validator::new(ValidationFlags::all(), capabilities(v))
                    .validate_resolved_overrides(&resolved)
                    .unwrap_or_else(|e| panic!("{} {v:?} {}: {}", s.file, entry.name, e.emit_to_string(&src)));

                let uses = info.get_entry_point(index);
                let mut used = Vec::new();
                for (h, gv) in module.global_variables.iter() {
                    let Some(binding) = &gv.binding else { continue };
                    if uses[h].is_empty() {
                        continue;
                    }
                    let access = match gv.space {
                        naga::AddressSpace::Uniform => Access::Uniform,
                        naga::AddressSpace::Storage { access } if access.contains(naga::StorageAccess::STORE) => {
                            Access::ReadWrite
                        }
                        naga::AddressSpace::Storage { .. } => Access::Read,
                        other => panic!("{}: unexpected address space {other:?}", s.file),
                    };
                    assert_eq!(binding.group, 0, "{} {}: kernels use bind group 0 only", s.file, entry.name);
                    used.push((binding.binding, gv.name.clone().unwrap_or_default(), access));
                }
                used.sort_by_key(|u| u.0);
                let declared: Vec<(u32, String, Access)> =
                    entry.bindings.iter().map(|b| (b.index, b.name.to_string(), b.access)).collect();
                assert_eq!(used, declared, "{} {}: shader bindings differ from the launcher's", s.file, entry.name);
                checked += 1;
            }
        }
    }
    assert!(checked > 0, "no entry points were checked");
}

#[test]
fn f32_variants_do_not_need_f16() {
    // A variant that parses only with f16 enabled would fail on adapters without it.
    for s in SHADERS {
        if s.variants.contains(&Variant::F32) {
            assert!(!s.body.contains("enable f16"), "{}: `enable` belongs in the variant header", s.file);
        }
    }
}

#[test]
fn coop_variants_compile_to_spirv() {
    // naga 30.0.1's SPIR-V writer is where cooperative-matrix shaders have
    // panicked ("Expression [N] is not cached!") although they validated, so
    // write each CoopF16 entry point as wgpu's Vulkan backend would: overrides
    // resolved, SPIR-V 1.6 with Restrict bounds checks, and also the defaults.
    let mut written = 0;
    for s in SHADERS.iter().filter(|s| s.variants.contains(&Variant::CoopF16)) {
        let src = s.source(Variant::CoopF16);
        let module =
            naga::front::wgsl::parse_str(&src).unwrap_or_else(|e| panic!("{}: {}", s.file, e.emit_to_string(&src)));
        let caps = capabilities(Variant::CoopF16);
        let info = Validator::new(ValidationFlags::all(), caps)
            .validate(&module)
            .unwrap_or_else(|e| panic!("{}: {}", s.file, e.emit_to_string(&src)));
        let mut constants = naga::back::PipelineConstants::default();
        for (k, val) in s.overrides {
            constants.insert(k.to_string(), *val);
        }
        for entry in s.entries {
            let (resolved, _) = naga::back::pipeline_constants::process_overrides(
                &module,
                &info,
                Some((naga::ShaderStage::Compute, entry.name)),
                &constants,
            )
            .unwrap_or_else(|e| panic!("{} {}: overrides: {e}", s.file, entry.name));
            let resolved_info = Validator::new(ValidationFlags::all(), caps)
                .validate_resolved_overrides(&resolved)
                .unwrap_or_else(|e| panic!("{} {}: {}", s.file, entry.name, e.emit_to_string(&src)));
            let restrict = naga::back::spv::Options {
                lang_version: (1, 6),
                bounds_check_policies: naga::proc::BoundsCheckPolicies {
                    index: naga::proc::BoundsCheckPolicy::Restrict,
                    buffer: naga::proc::BoundsCheckPolicy::Restrict,
                    image_load: naga::proc::BoundsCheckPolicy::Restrict,
                    binding_array: naga::proc::BoundsCheckPolicy::Unchecked,
                },
                force_loop_bounding: true,
                ..Default::default()
            };
            for options in [restrict, naga::back::spv::Options::default()] {
                let pipeline = naga::back::spv::PipelineOptions {
                    shader_stage: naga::ShaderStage::Compute,
                    entry_point: entry.name.to_string(),
                };
                let result = std::panic::catch_unwind(|| {
                    naga::back::spv::write_vec(&resolved, &resolved_info, &options, Some(&pipeline))
                });
                match result {
                    Ok(Ok(words)) => assert!(!words.is_empty()),
                    Ok(Err(e)) => panic!("{} {}: SPIR-V writer error: {e}", s.file, entry.name),
                    Err(p) => {
                        let msg = p
                            .downcast_ref::<String>()
                            .cloned()
                            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                            .unwrap_or_default();
                        panic!("{} {}: naga's SPIR-V writer panicked: {msg}", s.file, entry.name)
                    }
                }
                written += 1;
            }
        }
    }
    assert!(written > 0, "no CoopF16 variant found");
}
