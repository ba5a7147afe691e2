//! Kernel contracts: every WGSL uniform parameter struct, reflected with naga
//! for every shader and variant, has the members (names, byte offsets, scalar
//! types, size) of the Rust parameter block that `ops::PARAM_BLOCKS` assigns
//! to it, and every entry of that table is used. A field reordered or retyped
//! on either side fails here rather than in a picture.

use std::collections::BTreeSet;

use gpu::launch::ParamType;
use gpu::ops::{PARAM_BLOCKS, param_block_of};
use gpu::shaders::{SHADERS, ShaderSource, Variant};
use naga::valid::{ValidationFlags, Validator};

use super::shaders::capabilities;

/// One member of a parameter block: name, byte offset, scalar type.
type Member = (String, usize, ParamType);

/// The members of the uniform struct bound as `var_name` in one variant of a
/// shader, and its size in bytes.
fn uniform_members(s: &ShaderSource, v: Variant, var_name: &str) -> (Vec<Member>, u32) {
    let src = s.source(v);
    let module = naga::front::wgsl::parse_str(&src).unwrap_or_else(|e| panic!("{} {v:?}: {e}", s.file));
    Validator::new(ValidationFlags::all(), capabilities(v))
        .validate(&module)
        .unwrap_or_else(|e| panic!("{} {v:?} is invalid: {e}", s.file));
    let (_, gv) = module
        .global_variables
        .iter()
        .find(|(_, g)| g.space == naga::AddressSpace::Uniform && g.name.as_deref() == Some(var_name))
        .unwrap_or_else(|| panic!("{} {v:?} has no uniform {var_name}", s.file));
    let naga::TypeInner::Struct { members, span } = &module.types[gv.ty].inner else {
        panic!("{} {v:?}: uniform {var_name} is not a struct", s.file)
    };
    let fields = members
        .iter()
        .map(|m| {
            let name = m.name.clone().unwrap_or_default();
            let ty = match module.types[m.ty].inner {
                naga::TypeInner::Scalar(naga::Scalar { kind, width: 4 }) => match kind {
                    naga::ScalarKind::Uint => ParamType::U32,
                    naga::ScalarKind::Sint => ParamType::I32,
                    naga::ScalarKind::Float => ParamType::F32,
                    other => panic!("{} {v:?}: {var_name}.{name} is {other:?}, not a 4-byte scalar", s.file),
                },
                ref other => panic!("{} {v:?}: {var_name}.{name} is {other:?}, not a 4-byte scalar", s.file),
            };
            (name, m.offset as usize, ty)
        })
        .collect();
    (fields, *span)
}

#[test]
fn every_wgsl_parameter_struct_matches_its_rust_block() {
    let mut used = BTreeSet::new();
    let mut checked = 0;
    for s in SHADERS {
        for entry in s.entries {
            let Some(uniform) = entry.bindings.iter().find(|b| b.access == gpu::shaders::Access::Uniform) else {
                continue;
            };
            let block = param_block_of(s.family, entry).unwrap_or_else(|| {
                panic!("{} {}: no parameter block for uniform {}", s.file, entry.name, uniform.name)
            });
            let rust: Vec<Member> = block.iter().map(|f| (f.name.to_string(), f.offset, f.ty)).collect();
            used.insert((format!("{:?}", s.family), uniform.name));
            for &v in s.variants {
                let (wgsl, span) = uniform_members(s, v, uniform.name);
                for (i, (w, r)) in wgsl.iter().zip(&rust).enumerate() {
                    assert_eq!(
                        w, r,
                        "{} {v:?} {}: member {i} of {} differs (WGSL left, Rust right)",
                        s.file, entry.name, uniform.name
                    );
                }
                assert_eq!(
                    wgsl.len(),
                    rust.len(),
                    "{} {v:?}: {} has {} members, its Rust block {}",
                    s.file,
                    uniform.name,
                    wgsl.len(),
                    rust.len()
                );
                // The Rust block's bytes are padded to 16; WGSL's span must fit them.
                let rust_bytes = rust.last().map_or(0, |f| f.1 + 4);
                assert_eq!(span as usize, rust_bytes.div_ceil(4) * 4, "{} {v:?}: {} size", s.file, uniform.name);
                checked += 1;
            }
        }
    }
    assert!(checked > 0, "no parameter struct was checked");
    let table: BTreeSet<_> = PARAM_BLOCKS.iter().map(|(f, name, _)| (format!("{f:?}"), *name)).collect();
    assert_eq!(table, used, "PARAM_BLOCKS names uniforms no shader entry point binds");
}
