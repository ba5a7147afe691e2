//! Picking and repeating batch items as ComfyUI's LatentFromBatch and RepeatLatentBatch do
//! (`nodes.py` @ 02217e36a45bcbe2dd8fa24187aa5e053d9aea2e), on any batch of items of equal length
//! (latents, their noise masks), and the `batch_index` lists ComfyUI keeps beside them (which items of the
//! original batch these are: `prepare_noise` gives each the noise it had there).

/// LatentFromBatch's `(start, count)` in a batch of `batch`: a negative `batch_index` counts from the end
/// and `length` stops at the end, as ComfyUI; an index outside the batch is an error (ComfyUI silently takes
/// the first or last item).
pub fn from_batch_range(batch: usize, batch_index: i64, length: usize) -> Result<(usize, usize), String> {
    if batch == 0 {
        return Err("input \"samples\" is an empty batch".into());
    }
    let b = batch as i64;
    let start = if batch_index < 0 { batch_index + b } else { batch_index };
    if !(0..b).contains(&start) {
        return Err(format!(
            "param \"batch_index\": {batch_index} is outside a batch of {batch} (0..={}, or -{batch}..=-1 from the end)",
            b - 1
        ));
    }
    let start = start as usize;
    Ok((start, length.min(batch - start)))
}

/// Items `indices` of `data` (items of `item` values), in that order.
pub fn select_items(data: &[f32], item: usize, indices: &[usize]) -> Vec<f32> {
    indices.iter().flat_map(|&i| &data[i * item..(i + 1) * item]).copied().collect()
}

/// The noise masks LatentFromBatch keeps of `mask_batch` masks for items `start..start + count` of a batch
/// of latents: a single mask stays; otherwise the masks are repeated to the batch and the same items taken,
/// mask `(start + k) % mask_batch` for item `k`.
pub fn from_batch_mask_items(mask_batch: usize, start: usize, count: usize) -> Vec<usize> {
    if mask_batch <= 1 { vec![0; mask_batch] } else { (start..start + count).map(|i| i % mask_batch).collect() }
}

/// LatentFromBatch's `batch_index`: the original indices of the items taken (`start..start + count`, or
/// those entries of the latent's own list).
pub fn from_batch_indices(existing: Option<&[usize]>, start: usize, count: usize) -> Vec<usize> {
    match existing {
        None => (start..start + count).collect(),
        Some(inds) => inds[start.min(inds.len())..(start + count).min(inds.len())].to_vec(),
    }
}

/// RepeatLatentBatch's `batch_index`: a latent without one gets none; otherwise copy `i` of the list is
/// shifted by `i * (max - min + 1)`, so the copies draw noise beyond the original batch's.
pub fn repeat_batch_indices(existing: Option<&[usize]>, amount: usize) -> Option<Vec<usize>> {
    let inds = existing?;
    let (Some(&lo), Some(&hi)) = (inds.iter().min(), inds.iter().max()) else { return Some(Vec::new()) };
    let offset = hi - lo + 1;
    Some((0..amount.max(1)).flat_map(|i| inds.iter().map(move |&x| x + i * offset)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_batch_takes_comfyuis_items_and_refuses_indices_outside() {
        assert_eq!(from_batch_range(4, 1, 2), Ok((1, 2)));
        assert_eq!(from_batch_range(4, 2, 64), Ok((2, 2)));
        assert_eq!(from_batch_range(4, -1, 1), Ok((3, 1)));
        assert_eq!(from_batch_range(4, -4, 3), Ok((0, 3)));
        for bad in [4, 100, -5] {
            let e = from_batch_range(4, bad, 1).unwrap_err();
            assert!(e.contains("\"batch_index\"") && e.contains(&format!("{bad} is outside a batch of 4")), "{e}");
        }
        assert!(from_batch_range(0, 0, 1).unwrap_err().contains("\"samples\""));
        // Items 1 and 2 of four items of two values.
        let data: Vec<f32> = (0..8).map(|v| v as f32).collect();
        assert_eq!(select_items(&data, 2, &[1, 2]), [2.0, 3.0, 4.0, 5.0]);
    }

    #[test]
    fn from_batch_masks_repeat_to_the_batch_before_slicing() {
        // One mask stays; two masks for a batch of 5 repeat as 0 1 0 1 0: items 2..5 are masks 0 1 0.
        assert_eq!(from_batch_mask_items(1, 3, 2), [0]);
        assert_eq!(from_batch_mask_items(2, 2, 3), [0, 1, 0]);
        assert_eq!(from_batch_mask_items(5, 1, 3), [1, 2, 3]);
        assert_eq!(from_batch_indices(None, 2, 3), [2, 3, 4]);
        assert_eq!(from_batch_indices(Some(&[7, 8, 9, 10]), 1, 2), [8, 9]);
    }

    #[test]
    fn repeated_indices_shift_each_copy_past_the_last() {
        assert_eq!(repeat_batch_indices(None, 3), None);
        // [2, 3] (taken from a batch) repeated 3 times: offset 2.
        assert_eq!(repeat_batch_indices(Some(&[2, 3]), 3), Some(vec![2, 3, 4, 5, 6, 7]));
        assert_eq!(repeat_batch_indices(Some(&[5]), 2), Some(vec![5, 6]));
        assert_eq!(repeat_batch_indices(Some(&[1, 4]), 2), Some(vec![1, 4, 5, 8]));
    }
}
