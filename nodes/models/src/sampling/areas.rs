//! Area conditioning before sampling, as ComfyUI's `process_conds` prepares it
//! (`comfy/samplers.py`, Comfy-Org/ComfyUI @ 311c01406130b2acbe8ab291043502de26cf3871,
//! `create_cond_with_same_area_if_none`): every conditioning with an area gets a
//! partner on the other side (negative for a positive, and the reverse) with the
//! same area, so guidance inside an area compares like with like.

/// An area `(h, w, y, x)` in latent pixels.
pub type Area = (usize, usize, usize, usize);

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
    fn without_a_covering_entry_nothing_is_added() {
        let pos = [("cat", Some((4, 4, 4, 4)))];
        let neg = [("left", Some((8, 4, 0, 0)))];
        let (p, n) = pair(&pos, &neg);
        assert_eq!((p, n), (pos.to_vec(), neg.to_vec()));
    }
}
