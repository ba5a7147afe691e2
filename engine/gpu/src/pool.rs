//! A buffer pool: storage buffers come back here when their last tensor is
//! dropped and are handed out again for the next tensor of the same size, so
//! a network pass allocates nothing after the first.
//!
//! Reuse is safe without waiting for the GPU: every op records into one
//! encoder, in order, so a buffer's next writer is always recorded after its
//! last reader, and wgpu orders the passes.
//!
//! The pool also counts the bytes it holds (in use plus idle) and their peak:
//! every tensor, weights included, comes from here, so this is sdgraph's
//! answer to `torch.cuda.max_memory_allocated` (staging and uniform buffers
//! are not counted).

use std::collections::HashMap;
use std::ops::Deref;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Usage of every pooled buffer: kernels read and write it, copies move data in and out.
pub const STORAGE_USAGE: wgpu::BufferUsages =
    wgpu::BufferUsages::STORAGE.union(wgpu::BufferUsages::COPY_SRC).union(wgpu::BufferUsages::COPY_DST);

#[derive(Default)]
pub struct BufferPool {
    free: Mutex<HashMap<u64, Vec<wgpu::Buffer>>>,
    /// Bytes of every buffer this pool created and still holds or lent out.
    allocated: AtomicU64,
    /// The most `allocated` has been since creation or the last `reset_peak`.
    peak: AtomicU64,
    /// Buffers created (not reused) so far.
    created: AtomicU64,
}

impl BufferPool {
    /// A buffer of exactly `size` bytes, reused if one is free.
    pub fn take(self: &Arc<Self>, device: &wgpu::Device, size: u64) -> PooledBuffer {
        let reused = self.free.lock().ok().and_then(|mut f| f.get_mut(&size).and_then(|v| v.pop()));
        let buffer = reused.unwrap_or_else(|| {
            self.created.fetch_add(1, Ordering::Relaxed);
            let now = self.allocated.fetch_add(size, Ordering::Relaxed) + size;
            self.peak.fetch_max(now, Ordering::Relaxed);
            device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("tensor"),
                size,
                usage: STORAGE_USAGE,
                mapped_at_creation: false,
            })
        });
        PooledBuffer { buffer: Some(buffer), pool: Arc::downgrade(self) }
    }

    /// Buffers this pool has created.
    pub fn created(&self) -> u64 {
        self.created.load(Ordering::Relaxed)
    }

    pub fn pooled_bytes(&self) -> u64 {
        self.free.lock().map(|f| f.iter().map(|(s, v)| s * v.len() as u64).sum()).unwrap_or(0)
    }

    /// Bytes of all buffers the pool holds, lent out or idle.
    pub fn allocated_bytes(&self) -> u64 {
        self.allocated.load(Ordering::Relaxed)
    }

    /// The most bytes held at once since creation or the last [`Self::reset_peak`].
    pub fn peak_bytes(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }

    /// Starts a new peak measurement from what is held now.
    pub fn reset_peak(&self) {
        self.peak.store(self.allocated_bytes(), Ordering::Relaxed);
    }

    /// Frees every idle buffer.
    pub fn clear(&self) {
        if let Ok(mut f) = self.free.lock() {
            let idle: u64 = f.iter().map(|(s, v)| s * v.len() as u64).sum();
            f.clear();
            self.allocated.fetch_sub(idle, Ordering::Relaxed);
        }
    }
}

/// A storage buffer that returns to its pool on drop.
pub struct PooledBuffer {
    buffer: Option<wgpu::Buffer>,
    pool: std::sync::Weak<BufferPool>,
}

impl Deref for PooledBuffer {
    type Target = wgpu::Buffer;
    fn deref(&self) -> &wgpu::Buffer {
        // Only `drop` takes the buffer out.
        self.buffer.as_ref().expect("buffer present until drop")
    }
}

impl Drop for PooledBuffer {
    fn drop(&mut self) {
        if let (Some(b), Some(pool)) = (self.buffer.take(), self.pool.upgrade()) {
            match pool.free.lock() {
                Ok(mut f) => f.entry(b.size()).or_default().push(b),
                // A poisoned pool drops the buffer: count it as freed.
                Err(_) => {
                    pool.allocated.fetch_sub(b.size(), Ordering::Relaxed);
                }
            }
        }
    }
}
