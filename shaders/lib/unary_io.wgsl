// The bindings of a kernel from x to y of one type: 0 the kernel's own
// Params (uniform), 1 x (read), 2 y (write); workgroups of WG invocations.

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<T>;
@group(0) @binding(2) var<storage, read_write> y: array<T>;

const WG: u32 = 256u;

// The invocation's element: the grid may be 2-D when there are more than 65535 workgroups.
fn index(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.y * nwg.x + wid.x) * WG + lid;
}
