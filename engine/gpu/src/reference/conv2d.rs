//! Reference 2-D convolution in f64, as PyTorch's `F.conv2d` with groups = 1:
//! the definition `ops::conv2d` is tested against.

/// `x` is `[B, Cin, H, W]`, `w` `[Cout, Cin, kh, kw]`, `bias` `[Cout]`;
/// `stride`, `padding` and `dilation` are (y, x). Returns `[B, Cout, Hout, Wout]`
/// and that shape, with `Hout = (H + 2 pad - dil (kh - 1) - 1) / stride + 1`.
// The arguments are F.conv2d's, in its order.
#[allow(clippy::too_many_arguments)]
pub fn conv2d(
    x: &[f32],
    x_shape: [usize; 4],
    w: &[f32],
    w_shape: [usize; 4],
    bias: Option<&[f32]>,
    stride: (usize, usize),
    padding: (usize, usize),
    dilation: (usize, usize),
) -> (Vec<f64>, [usize; 4]) {
    let [b, cin, h, wd] = x_shape;
    let [cout, wcin, kh, kw] = w_shape;
    assert_eq!(cin, wcin, "channel mismatch");
    let hout = (h + 2 * padding.0 - dilation.0 * (kh - 1) - 1) / stride.0 + 1;
    let wout = (wd + 2 * padding.1 - dilation.1 * (kw - 1) - 1) / stride.1 + 1;
    let mut out = vec![0.0f64; b * cout * hout * wout];
    for n in 0..b {
        for co in 0..cout {
            for oy in 0..hout {
                for ox in 0..wout {
                    let mut s = bias.map_or(0.0, |bb| bb[co] as f64);
                    for ci in 0..cin {
                        for ky in 0..kh {
                            for kx in 0..kw {
                                // Input coordinates; the padding ring reads zeros.
                                let iy = (oy * stride.0 + ky * dilation.0) as isize - padding.0 as isize;
                                let ix = (ox * stride.1 + kx * dilation.1) as isize - padding.1 as isize;
                                if iy < 0 || ix < 0 || iy >= h as isize || ix >= wd as isize {
                                    continue;
                                }
                                let xv = x[((n * cin + ci) * h + iy as usize) * wd + ix as usize];
                                let wv = w[((co * cin + ci) * kh + ky) * kw + kx];
                                s += xv as f64 * wv as f64;
                            }
                        }
                    }
                    out[((n * cout + co) * hout + oy) * wout + ox] = s;
                }
            }
        }
    }
    (out, [b, cout, hout, wout])
}

#[cfg(test)]
mod tests {
    #[test]
    fn three_by_three_box_filter_with_padding() {
        // A 3x3 all-ones kernel over a 3x3 all-ones image with padding 1 counts neighbours.
        let (y, s) =
            super::conv2d(&[1.0; 9], [1, 1, 3, 3], &[1.0; 9], [1, 1, 3, 3], Some(&[0.5]), (1, 1), (1, 1), (1, 1));
        assert_eq!(s, [1, 1, 3, 3]);
        assert_eq!(y, vec![4.5, 6.5, 4.5, 6.5, 9.5, 6.5, 4.5, 6.5, 4.5]);
        // Stride 2 keeps the corners and the centre row/column pattern.
        let (y, s) = super::conv2d(&[1.0; 9], [1, 1, 3, 3], &[1.0; 9], [1, 1, 3, 3], None, (2, 2), (1, 1), (1, 1));
        assert_eq!(s, [1, 1, 2, 2]);
        assert_eq!(y, vec![4.0; 4]);
    }
}
