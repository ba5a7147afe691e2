//! GPU tensors.
//!
//! Layout: contiguous, row-major, the last axis innermost. Image-like
//! activations are NCHW (`[B, C, H, W]`), sequences `[B, L, C]`, as in
//! PyTorch, so weights load without transposes. A tensor owns a whole pooled
//! buffer; reshapes share it, slices copy.

use std::sync::Arc;

use super::device::{Gpu, GpuError};
use super::pool::PooledBuffer;
use super::recording::SMALL_UPLOAD;
use super::shaders::Variant;

/// The largest readback buffer kept for reuse (a big picture's is freed).
const KEEP_READBACK: u64 = 16 << 20;

/// Storage type. Arithmetic is always f32.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F16,
}

impl DType {
    /// The storage type a setting names (`SDGRAPH_DTYPE`): `f32` or `f16`, surrounding blanks ignored.
    pub fn from_setting(value: &str) -> Result<DType, String> {
        match value.trim() {
            "f32" => Ok(DType::F32),
            "f16" => Ok(DType::F16),
            other => Err(format!("{other:?} is not one of f32, f16")),
        }
    }

    pub fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 => 2,
        }
    }

    pub fn variant(self) -> Variant {
        match self {
            DType::F32 => Variant::F32,
            DType::F16 => Variant::F16,
        }
    }
}

/// A tensor on the GPU.
#[derive(Clone)]
pub struct Tensor {
    shape: Vec<usize>,
    dtype: DType,
    buf: Arc<PooledBuffer>,
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tensor({:?}, {:?})", self.shape, self.dtype)
    }
}

pub fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

/// Bytes a buffer needs for `n` elements: copies and bindings want multiples of 4.
fn byte_size(n: usize, dtype: DType) -> u64 {
    ((n * dtype.size()) as u64).div_ceil(4).max(1) * 4
}

impl Tensor {
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    pub fn numel(&self) -> usize {
        numel(&self.shape)
    }
    pub fn rank(&self) -> usize {
        self.shape.len()
    }
    /// Size of one axis; negative indices count from the end.
    pub fn dim(&self, axis: isize) -> usize {
        let r = self.shape.len() as isize;
        let a = if axis < 0 { r + axis } else { axis };
        self.shape[a as usize]
    }
    pub fn buffer(&self) -> &wgpu::Buffer {
        &self.buf
    }
    /// Bytes the data occupies (without padding).
    pub fn bytes(&self) -> u64 {
        (self.numel() * self.dtype.size()) as u64
    }

    /// The same data under another shape with the same element count (no copy).
    pub fn reshape(&self, shape: &[usize]) -> Result<Tensor, GpuError> {
        if numel(shape) != self.numel() {
            return Err(GpuError::Shape(format!("cannot reshape {:?} to {shape:?}", self.shape)));
        }
        Ok(Tensor { shape: shape.to_vec(), dtype: self.dtype, buf: self.buf.clone() })
    }

    /// A reference that does not keep the buffer alive (a table of what is loaded, not an owner of it).
    pub fn downgrade(&self) -> WeakTensor {
        WeakTensor { shape: self.shape.clone(), dtype: self.dtype, buf: Arc::downgrade(&self.buf) }
    }

    /// Whether `other` is this tensor's buffer (a reshape of it, or it).
    pub fn same_buffer(&self, other: &Tensor) -> bool {
        Arc::ptr_eq(&self.buf, &other.buf)
    }
}

/// A [`Tensor`] held without owning its buffer: [`upgrade`](WeakTensor::upgrade) gives it back while
/// some tensor still owns the buffer.
#[derive(Clone)]
pub struct WeakTensor {
    shape: Vec<usize>,
    dtype: DType,
    buf: std::sync::Weak<PooledBuffer>,
}

impl std::fmt::Debug for WeakTensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WeakTensor({:?}, {:?})", self.shape, self.dtype)
    }
}

impl WeakTensor {
    pub fn upgrade(&self) -> Option<Tensor> {
        Some(Tensor { shape: self.shape.clone(), dtype: self.dtype, buf: self.buf.upgrade()? })
    }
}

impl Gpu {
    /// An uninitialised tensor (a reused buffer may hold old data).
    pub fn empty(&self, shape: &[usize], dtype: DType) -> Result<Tensor, GpuError> {
        let n = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        let n = n.ok_or_else(|| GpuError::Shape(format!("shape {shape:?} overflows")))?;
        if dtype == DType::F16 && !self.features().shader_f16 {
            return Err(GpuError::Shape(format!("{} has no f16 support; use f32 tensors", self.info.name)));
        }
        let bytes = byte_size(n, dtype);
        if bytes > self.limits.max_buffer_size {
            return Err(GpuError::TooLarge { bytes, limit: self.limits.max_buffer_size, what: "buffer" });
        }
        let buf = self.pool.take(&self.device, bytes);
        Ok(Tensor { shape: shape.to_vec(), dtype, buf: Arc::new(buf) })
    }

    /// A zero-filled tensor.
    pub fn zeros(&self, shape: &[usize], dtype: DType) -> Result<Tensor, GpuError> {
        let t = self.empty(shape, dtype)?;
        self.with_encoder(|enc| enc.clear_buffer(t.buffer(), 0, None));
        Ok(t)
    }

    /// Uploads f32 data, stored as `dtype`.
    pub fn upload(&self, data: &[f32], shape: &[usize], dtype: DType) -> Result<Tensor, GpuError> {
        if data.len() != numel(shape) {
            return Err(GpuError::Shape(format!("{} values do not fill shape {shape:?}", data.len())));
        }
        self.upload_filled(shape, dtype, |dst| match dtype {
            DType::F32 => dst.chunks_exact_mut(4).zip(data).for_each(|(d, v)| d.copy_from_slice(&v.to_le_bytes())),
            DType::F16 => dst
                .chunks_exact_mut(2)
                .zip(data)
                .for_each(|(d, v)| d.copy_from_slice(&half::f16::from_f32(*v).to_le_bytes())),
        })
    }

    /// A tensor whose bytes (little-endian, `numel * dtype size` of them)
    /// `fill` writes, converting from a file's format in one pass: uploading
    /// large weights with no intermediate f32 copy.
    pub fn upload_filled(
        &self,
        shape: &[usize],
        dtype: DType,
        fill: impl FnOnce(&mut [u8]),
    ) -> Result<Tensor, GpuError> {
        let t = self.empty(shape, dtype)?;
        self.fill_staged(&t, fill);
        Ok(t)
    }

    /// Copies bytes in through a staging buffer recorded in the current
    /// encoder, so the write is ordered after earlier recorded work on a
    /// reused buffer (a queue write would jump ahead of it). `fill` writes
    /// the first `t.bytes()` bytes of the staging memory; the padding is zeroed.
    fn fill_staged(&self, t: &Tensor, fill: impl FnOnce(&mut [u8])) {
        let size = t.buffer().size();
        // The data (made here: mapped memory is write-only, it may be
        // write-combined), zero-padded to the buffer's size.
        let mut data = vec![0u8; size as usize];
        fill(&mut data[..t.bytes() as usize]);
        if size <= SMALL_UPLOAD {
            // A step's latent or timesteps: through a recycled arena, no new buffer.
            self.with_recording(|rec| rec.upload(&self.arenas, &self.device, &data, t.buffer(), size));
            return;
        }
        self.other_buffers.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("upload"),
            size,
            usage: wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::MAP_WRITE,
            mapped_at_creation: true,
        });
        // A buffer mapped at creation is always mappable in full.
        staging.get_mapped_range_mut(..).expect("mapped at creation").copy_from_slice(&data);
        staging.unmap();
        self.with_encoder(|enc| enc.copy_buffer_to_buffer(&staging, 0, t.buffer(), 0, Some(size)));
    }

    /// Reads a tensor back as f32 (waits for all recorded work).
    pub fn download(&self, t: &Tensor) -> Result<Vec<f32>, GpuError> {
        let size = t.buffer().size();
        let reused = self.readbacks.lock().ok().and_then(|mut f| f.get_mut(&size).and_then(|v| v.pop()));
        let readback = reused.unwrap_or_else(|| {
            self.other_buffers.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("readback"),
                size,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        });
        self.with_encoder(|enc| enc.copy_buffer_to_buffer(t.buffer(), 0, &readback, 0, Some(size)));
        self.flush();
        let (tx, rx) = std::sync::mpsc::channel();
        readback.map_async(wgpu::MapMode::Read, .., move |r| {
            let _ = tx.send(r);
        });
        self.sync()?;
        rx.recv().map_err(|e| GpuError::Readback(e.to_string()))?.map_err(|e| GpuError::Readback(e.to_string()))?;
        let out = {
            let view = readback.get_mapped_range(..).map_err(|e| GpuError::Readback(e.to_string()))?;
            let n = t.numel();
            match t.dtype {
                DType::F32 => {
                    view.chunks_exact(4).take(n).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
                }
                DType::F16 => {
                    view.chunks_exact(2).take(n).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect()
                }
            }
        };
        readback.unmap();
        // Kept for the next download of this size (a step's latent), unless large.
        if size <= KEEP_READBACK
            && let Ok(mut free) = self.readbacks.lock()
        {
            free.entry(size).or_default().push(readback);
        }
        Ok(out)
    }
}
