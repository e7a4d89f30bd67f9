//! The key/value cache of one sequence.

use candle_core::{DType, Device, Tensor};

use super::ModelError;

/// Smallest capacity (tokens) a cache allocates; growth doubles from there.
const MIN_CAPACITY: usize = 64;

/// Keys and values of one sequence, for every layer. Made by
/// [`QuantizedTransformer::new_cache`](super::QuantizedTransformer::new_cache); one per sequence.
///
/// Buffers are preallocated and grown by doubling (amortised O(1) per appended token), and
/// the first [`len`](Self::len) positions are valid. On the CPU each layer holds plain
/// `[capacity, kv_heads, head_dim]` f32 buffers (position-major: a token's keys are one
/// contiguous append, growth never re-lays out what is stored, and Hearth's attention kernel
/// reads them in place); on other devices `[kv_heads, capacity, head_dim]` tensors for candle's
/// operators. Not `Clone`: a shallow copy would share buffers that later appends write in place.
#[derive(Debug)]
pub struct KvCache {
    pub(crate) layers: Vec<LayerCache>,
    len: usize,
    capacity: usize,
    kv_heads: usize,
    head_dim: usize,
    max_len: usize,
    device: Device,
}

/// One layer's key and value buffers.
#[derive(Debug)]
pub(crate) enum LayerCache {
    /// CPU: `[capacity, kv_heads, head_dim]` each.
    Host { k: Vec<f32>, v: Vec<f32> },
    /// Other devices: `[kv_heads, capacity, head_dim]` each (`None` until the first reserve).
    Device { k: Option<Tensor>, v: Option<Tensor> },
}

impl KvCache {
    pub(crate) fn new(layers: usize, kv_heads: usize, head_dim: usize, max_len: usize, device: &Device) -> Self {
        let layer = || {
            if device.is_cpu() {
                LayerCache::Host { k: Vec::new(), v: Vec::new() }
            } else {
                LayerCache::Device { k: None, v: None }
            }
        };
        Self {
            layers: (0..layers).map(|_| layer()).collect(),
            len: 0,
            capacity: 0,
            kv_heads,
            head_dim,
            max_len,
            device: device.clone(),
        }
    }

    /// Number of positions cached: the position the next token will take.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing has been cached yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Forgets every position, keeping the buffers for reuse by the next sequence.
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Forgets the positions from `len` on (e.g. to roll back rejected draft tokens);
    /// a no-op when the cache is not longer than `len`.
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Bytes of cache buffers allocated (capacity, not just the valid positions).
    pub fn allocated_bytes(&self) -> usize {
        self.layers.len() * 2 * self.kv_heads * self.capacity * self.head_dim * 4
    }

    pub(crate) fn set_len(&mut self, len: usize) {
        self.len = len;
    }

    pub(crate) fn matches(&self, layers: usize, kv_heads: usize, head_dim: usize) -> bool {
        self.layers.len() == layers && self.kv_heads == kv_heads && self.head_dim == head_dim
    }

    /// Makes room for `needed` positions in every layer, doubling the capacity as needed.
    pub(crate) fn reserve(&mut self, needed: usize) -> Result<(), ModelError> {
        if needed <= self.capacity {
            return Ok(());
        }
        let new_capacity = needed.max(self.capacity * 2).max(MIN_CAPACITY).min(self.max_len.max(needed));
        let extra = new_capacity - self.capacity;
        let (kv_heads, head_dim, device) = (self.kv_heads, self.head_dim, &self.device);
        let grow = |old: &Option<Tensor>| -> Result<Tensor, ModelError> {
            let zeros = Tensor::zeros((kv_heads, extra, head_dim), DType::F32, device)?;
            Ok(match old {
                // Only the valid prefix matters, but copying the whole buffer in one cat is
                // cheaper than a narrow + contiguous + cat.
                Some(old) => Tensor::cat(&[old, &zeros], 1)?,
                None => zeros,
            })
        };
        for layer in &mut self.layers {
            match layer {
                LayerCache::Host { k, v } => {
                    k.resize(new_capacity * kv_heads * head_dim, 0.0);
                    v.resize(new_capacity * kv_heads * head_dim, 0.0);
                }
                LayerCache::Device { k, v } => {
                    *k = Some(grow(k)?);
                    *v = Some(grow(v)?);
                }
            }
        }
        self.capacity = new_capacity;
        Ok(())
    }
}
