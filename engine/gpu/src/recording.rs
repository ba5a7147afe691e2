//! What is being recorded for the next submit: the command encoder, the
//! compute pass kernels go into, the kernels' uniform parameters and the
//! bytes of small uploads.
//!
//! Recording cost per kernel is what limits a network of hundreds of small
//! kernels (the SD 1.5 UNet), and a sampling step should allocate nothing,
//! so the hot path creates no buffers once warm:
//! - consecutive dispatches share one compute pass (wgpu still places the
//!   barriers each dispatch needs); copies and clears end it;
//! - parameters are appended to arena buffers (256 slots each), bound at an
//!   offset; small uploads (a step's latent) are appended to upload arenas
//!   and copied to their tensor in recording order. An arena's bytes are
//!   written with `Queue::write_buffer` just before the submit; wgpu orders
//!   that write after every earlier submission (WebGPU's queue timeline), so
//!   after the submit the arena buffers go back to a free list and the next
//!   submit reuses them.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Parameter slots per uniform arena.
const SLOTS: u64 = 256;
/// Bytes of one upload arena; uploads up to [`SMALL_UPLOAD`] go through arenas.
const UPLOAD_ARENA: u64 = 4 << 20;
/// The largest upload that goes through an arena (larger ones get a staging
/// buffer of their own: weights must not wait in memory until the submit).
pub(crate) const SMALL_UPLOAD: u64 = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Uniform,
    Upload,
}

impl Kind {
    fn usage(self) -> wgpu::BufferUsages {
        match self {
            Kind::Uniform => wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            Kind::Upload => wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
        }
    }
}

struct Arena {
    kind: Kind,
    buffer: wgpu::Buffer,
    bytes: Vec<u8>,
}

/// Arena buffers between submits, and how many buffers were ever made.
#[derive(Default)]
pub(crate) struct ArenaPool {
    free: Mutex<Vec<(Kind, wgpu::Buffer)>>,
    pub created: AtomicU64,
}

impl ArenaPool {
    /// A free buffer of `kind` holding at least `size` bytes, or a new one.
    fn take(&self, device: &wgpu::Device, kind: Kind, size: u64) -> wgpu::Buffer {
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = free.iter().position(|(k, b)| *k == kind && b.size() >= size) {
            return free.swap_remove(i).1;
        }
        drop(free);
        self.created.fetch_add(1, Ordering::Relaxed);
        device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(match kind {
                Kind::Uniform => "params",
                Kind::Upload => "uploads",
            }),
            size,
            usage: kind.usage(),
            mapped_at_creation: false,
        })
    }

    /// Buffers whose contents have been handed to the queue.
    pub fn give_back(&self, arenas: Vec<(Kind, wgpu::Buffer)>) {
        self.free.lock().unwrap_or_else(|p| p.into_inner()).extend(arenas);
    }
}

pub(crate) struct Recording {
    /// The open compute pass; it locks `encoder` until dropped (declared
    /// first so that it is also dropped first).
    pass: Option<wgpu::ComputePass<'static>>,
    pub encoder: wgpu::CommandEncoder,
    arenas: Vec<Arena>,
}

/// A place in an arena: the buffer and the byte offset written there.
pub(crate) struct Slot {
    pub buffer: wgpu::Buffer,
    pub offset: u64,
}

impl Recording {
    pub fn new(device: &wgpu::Device) -> Recording {
        Recording { encoder: device.create_command_encoder(&Default::default()), pass: None, arenas: Vec::new() }
    }

    /// The encoder, with any open compute pass ended first.
    pub fn encoder(&mut self) -> &mut wgpu::CommandEncoder {
        self.pass = None;
        &mut self.encoder
    }

    /// The shared compute pass, opened if needed.
    pub fn pass(&mut self) -> &mut wgpu::ComputePass<'static> {
        let encoder = &mut self.encoder;
        self.pass.get_or_insert_with(|| {
            encoder
                .begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("kernels"), timestamp_writes: None })
                .forget_lifetime()
        })
    }

    /// Appends `data` to the newest arena of `kind` with room for `slot`
    /// bytes (a new arena of at least `arena_size` otherwise).
    fn append(
        &mut self,
        pool: &ArenaPool,
        device: &wgpu::Device,
        kind: Kind,
        data: &[u8],
        slot: u64,
        arena_size: u64,
    ) -> Slot {
        let fits = self.arenas.iter().rposition(|a| a.kind == kind && a.bytes.len() as u64 + slot <= a.buffer.size());
        let i = match fits {
            Some(i) => i,
            None => {
                let buffer = pool.take(device, kind, arena_size.max(slot));
                self.arenas.push(Arena { kind, buffer, bytes: Vec::new() });
                self.arenas.len() - 1
            }
        };
        let arena = &mut self.arenas[i];
        let offset = arena.bytes.len() as u64;
        arena.bytes.extend_from_slice(data);
        arena.bytes.resize((offset + slot) as usize, 0);
        Slot { buffer: arena.buffer.clone(), offset }
    }

    /// Stores `params` (a multiple of 16 bytes) for this submit and returns
    /// where to bind them (the size to bind is `params.len()`).
    pub fn uniform(&mut self, pool: &ArenaPool, device: &wgpu::Device, align: u64, params: &[u8]) -> Slot {
        let slot = (params.len() as u64).div_ceil(align) * align;
        self.append(pool, device, Kind::Uniform, params, slot, align.max(slot) * SLOTS)
    }

    /// Copies `data` (at most [`SMALL_UPLOAD`] bytes, padded to `size`, a
    /// multiple of 4) into the start of `dst` at this point of the recording.
    pub fn upload(&mut self, pool: &ArenaPool, device: &wgpu::Device, data: &[u8], dst: &wgpu::Buffer, size: u64) {
        // 256: copies need 4-byte offsets; a wider step keeps arenas tidy.
        let slot = size.div_ceil(256) * 256;
        let at = self.append(pool, device, Kind::Upload, data, slot, UPLOAD_ARENA);
        self.encoder().copy_buffer_to_buffer(&at.buffer, at.offset, dst, 0, Some(size));
    }

    /// Ends the pass and writes the arenas' bytes; returns the encoder to
    /// finish and submit, and the arena buffers to give back after the submit.
    pub fn finish(mut self, queue: &wgpu::Queue) -> (wgpu::CommandEncoder, Vec<(Kind, wgpu::Buffer)>) {
        self.pass = None;
        let mut used = Vec::with_capacity(self.arenas.len());
        for a in self.arenas {
            queue.write_buffer(&a.buffer, 0, &a.bytes);
            used.push((a.kind, a.buffer));
        }
        (self.encoder, used)
    }
}
