//! Area conditioning before sampling, as ComfyUI's `process_conds` prepares it
//! (`comfy/samplers.py`, Comfy-Org/ComfyUI @ 311c01406130b2acbe8ab291043502de26cf3871,
//! `create_cond_with_same_area_if_none`): every conditioning with an area gets a
//! partner on the other side (negative for a positive, and the reverse) with the
//! same area, so guidance inside an area compares like with like.

use pixels::Mask;

use crate::sampling::samplers::LatentArea;

/// An area `(h, w, y, x)` in latent pixels.
pub type Area = (usize, usize, usize, usize);

/// ConditioningSetMask's "mask bounds" area (ComfyUI's `set_area_to_bounds` in
/// `resolve_areas_and_cond_masks`): the bounding box of the pixels non-zero in
/// any mask of the batch, at least 8 by 8; `(8, 8, 0, 0)` for an empty mask.
pub fn mask_bounds(mask: &Mask) -> Area {
    let (mut y0, mut x0, mut y1, mut x1) = (usize::MAX, usize::MAX, 0, 0);
    let hw = mask.height * mask.width;
    for (i, &v) in mask.data.iter().enumerate() {
        if v != 0.0 {
            let (y, x) = ((i % hw) / mask.width, i % mask.width);
            (y0, x0, y1, x1) = (y0.min(y), x0.min(x), y1.max(y), x1.max(x));
        }
    }
    if y0 == usize::MAX {
        return (8, 8, 0, 0);
    }
    ((y1 - y0 + 1).max(8), (x1 - x0 + 1).max(8), y0, x0)
}

/// ConditioningSetMask's weights over an area's crop `[B, C, h, w]` (get_area_and_mult with a mask): mask
/// `b % masks` (the first B masks, repeated when there are fewer), already resized to the latent, cut to the
/// area, times `strength` in f32.
pub fn mask_weights(mask: &Mask, area: &LatentArea, strength: f32) -> Vec<f32> {
    let [b, c, _, _] = area.shape;
    let mut out = Vec::with_capacity(b * c * area.h * area.w);
    for bi in 0..b {
        let plane = &mask.data[(bi % mask.batch.max(1)) * mask.height * mask.width..];
        for _ in 0..c {
            for r in 0..area.h {
                let row = &plane[(area.y + r) * mask.width + area.x..][..area.w];
                out.extend(row.iter().map(|&v| v * strength));
            }
        }
    }
    out
}

/// For each entry of `from` with an area, in order, adds to `to` a copy of it
/// whose text is that of `to`'s smallest entry covering the area (an entry
/// without an area covers everything but counts only when no entry with an
/// area does), unless that entry already has exactly this area. `area` reads an
/// entry's area; `partner(c, smallest)` makes the copy: `c` with `smallest`'s
/// text (ComfyUI copies the entry and replaces its `model_conds`).
pub fn add_same_area_partners<T>(
    from: &[T],
    to: &mut Vec<T>,
    area: impl Fn(&T) -> Option<Area>,
    partner: impl Fn(&T, &T) -> T,
) {
    for c in from {
        let Some(ca) = area(c) else { continue };
        let (ch, cw, cy, cx) = ca;
        let mut smallest: Option<usize> = None;
        for (i, x) in to.iter().enumerate() {
            match area(x) {
                Some((h, w, y, xx)) => {
                    let covers = cy >= y && cx >= xx && h + y >= ch + cy && w + xx >= cw + cx;
                    if covers {
                        let better = match smallest.and_then(|s| area(&to[s])) {
                            None => true,
                            Some((sh, sw, _, _)) => sh * sw > h * w,
                        };
                        if better {
                            smallest = Some(i);
                        }
                    }
                }
                None => {
                    if smallest.is_none() {
                        smallest = Some(i);
                    }
                }
            }
        }
        let Some(s) = smallest else { continue };
        if area(&to[s]) == Some(ca) {
            continue;
        }
        let copy = partner(c, &to[s]);
        to.push(copy);
    }
}

/// ComfyUI's pairing over both sides: positives' areas into the negatives,
/// then the negatives' (with the copies just added) into the positives.
pub fn pair_areas<T>(
    positive: &mut Vec<T>,
    negative: &mut Vec<T>,
    area: impl Fn(&T) -> Option<Area> + Copy,
    partner: impl Fn(&T, &T) -> T + Copy,
) {
    add_same_area_partners(positive, negative, area, partner);
    add_same_area_partners(negative, positive, area, partner);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (text, area)
    type E = (&'static str, Option<Area>);

    fn pair(pos: &[E], neg: &[E]) -> (Vec<E>, Vec<E>) {
        let (mut p, mut n) = (pos.to_vec(), neg.to_vec());
        pair_areas(&mut p, &mut n, |e: &E| e.1, |c: &E, s: &E| (s.0, c.1));
        (p, n)
    }

    #[test]
    fn an_area_gets_a_negative_partner_from_the_smallest_covering_negative() {
        let pos = [("sky", None), ("cat", Some((8, 8, 0, 0))), ("dog", Some((4, 4, 2, 2)))];
        // The whole-picture negative covers both; a negative area covering only "dog" is smaller for it.
        let neg = [("blurry", None), ("ugly", Some((6, 6, 1, 1)))];
        let (p, n) = pair(&pos, &neg);
        // "ugly" in turn gets a positive partner: "cat" is the smallest positive covering it.
        assert_eq!(p, vec![pos[0], pos[1], pos[2], ("cat", Some((6, 6, 1, 1)))]);
        assert_eq!(
            n,
            vec![
                ("blurry", None),
                ("ugly", Some((6, 6, 1, 1))),
                ("blurry", Some((8, 8, 0, 0))),
                ("ugly", Some((4, 4, 2, 2)))
            ]
        );
    }

    #[test]
    fn a_negative_area_gets_a_positive_partner_and_equal_areas_are_not_doubled() {
        let pos = [("sky", None), ("cat", Some((4, 4, 0, 0)))];
        let neg = [("blurry", Some((4, 4, 0, 0))), ("dark", Some((2, 2, 4, 4)))];
        let (p, n) = pair(&pos, &neg);
        // "cat"'s area already has a negative with exactly that area: nothing added to the negatives.
        assert_eq!(n, neg);
        // "dark" gets a positive partner with "sky"'s text (the only covering positive).
        assert_eq!(p, vec![("sky", None), ("cat", Some((4, 4, 0, 0))), ("sky", Some((2, 2, 4, 4)))]);
    }

    #[test]
    fn mask_bounds_are_the_box_of_any_nonzero_pixel_at_least_8_wide() {
        let mut m = Mask::zeros(2, 20, 30);
        assert_eq!(mask_bounds(&m), (8, 8, 0, 0), "empty");
        m.data[3 * 30 + 5] = 0.5; // item 0, (y 3, x 5)
        assert_eq!(mask_bounds(&m), (8, 8, 3, 5), "one pixel, widened to 8x8 from its corner");
        m.data[600 + 15 * 30 + 20] = 1.0; // item 1, (y 15, x 20)
        assert_eq!(mask_bounds(&m), (13, 16, 3, 5), "over the whole batch");
    }

    #[test]
    fn mask_weights_cut_the_mask_to_the_area_per_item_and_channel() {
        let mut m = Mask::zeros(1, 4, 5);
        for (i, v) in m.data.iter_mut().enumerate() {
            *v = i as f32 / 20.0;
        }
        let area = LatentArea::clamped([2, 3, 4, 5], 2, 3, 1, 2).unwrap();
        let w = mask_weights(&m, &area, 2.0);
        assert_eq!(w.len(), 2 * 3 * 2 * 3);
        // One mask for a batch of two: repeated; every channel the same.
        let plane: Vec<f32> = [7, 8, 9, 12, 13, 14].iter().map(|&i| i as f32 / 20.0 * 2.0).collect();
        assert_eq!(w, plane.repeat(6));
    }

    #[test]
    fn without_a_covering_entry_nothing_is_added() {
        let pos = [("cat", Some((4, 4, 4, 4)))];
        let neg = [("left", Some((8, 4, 0, 0)))];
        let (p, n) = pair(&pos, &neg);
        assert_eq!((p, n), (pos.to_vec(), neg.to_vec()));
    }
}
