//! What a plugin sees of values: images and masks as userdata with pixel,
//! map and bulk access; scalars as Lua numbers, strings and booleans; types
//! with a [`ValueCodec`] as plain tables; everything else as opaque handles
//! that can only be passed on. Conversions back check every shape and type
//! and fail with a message, never a panic.
//!
//! Pixel coordinates, channels and batch indices are 0-based (as image
//! coordinates are everywhere else); flat tables are ordinary 1-based Lua
//! arrays, row-major with the channel innermost (`[B, H, W, C]`, as the
//! engine's [`value::Image`]).

use std::sync::Arc;

use mlua::{AnyUserData, Function, Lua, MetaMethod, MultiValue, Table, UserData, UserDataFields, UserDataMethods};

use super::sandbox::{Charge, charge, rt, state};
use super::{Data, value_codec};
use graph::types::PortType;
use graph::value::{self, Value};

/// Largest width or height a plugin may create.
const MAX_SIDE: usize = 16384;
const MAX_CHANNELS: usize = 4;
const MAX_BATCH: usize = 4096;
/// Nested `map` calls (a map whose function maps another image).
const MAX_MAP_DEPTH: u32 = 4;
/// Elements converted between two time checks in bulk loops.
const CHECK_EVERY: usize = 1 << 16;
/// Nesting of tables converted to [`Data`].
const MAX_DATA_DEPTH: usize = 32;

/// An image batch in Lua. Shares its pixels with the engine until written
/// (copy on write); copies and new images are charged to the memory limit.
pub(crate) struct Image {
    pub img: Arc<value::Image>,
    _charge: Option<Charge>,
}

/// A mask batch in Lua (same sharing as [`Image`]).
pub(crate) struct Mask {
    pub mask: Arc<value::Mask>,
    _charge: Option<Charge>,
}

/// A value the plugin cannot look into (a model, CLIP, conditioning...).
pub(crate) struct Opaque(pub Value);

fn bytes_of(elems: usize) -> usize {
    elems.saturating_mul(std::mem::size_of::<f32>())
}

/// Checks a 0-based index argument against `0..len`.
fn index(method: &str, name: &str, v: i64, len: usize) -> mlua::Result<usize> {
    if v < 0 || v as u64 >= len as u64 {
        return Err(rt(format!("{method}: {name} = {v} is outside 0..{}", len as i64 - 1)));
    }
    Ok(v as usize)
}

/// Checks a size argument against `1..=max`.
fn size(method: &str, name: &str, v: i64, max: usize) -> mlua::Result<usize> {
    if v < 1 || v as u64 > max as u64 {
        return Err(rt(format!("{method}: {name} = {v} must be in 1..={max}")));
    }
    Ok(v as usize)
}

fn number(v: &mlua::Value) -> Option<f64> {
    match v {
        mlua::Value::Integer(i) => Some(*i as f64),
        mlua::Value::Number(f) => Some(*f),
        _ => None,
    }
}

/// The numbers of a flat Lua array that must hold exactly `want` of them.
fn read_flat(lua: &Lua, method: &str, t: &Table, want: usize) -> mlua::Result<Vec<f32>> {
    let st = state(lua)?;
    let n = t.raw_len();
    if n != want {
        return Err(rt(format!("{method}: the table has {n} values; expected {want}")));
    }
    let mut out = Vec::with_capacity(want);
    for i in 1..=want {
        if i.is_multiple_of(CHECK_EVERY) {
            st.check_time()?;
        }
        let v: mlua::Value = t.raw_get(i)?;
        match number(&v) {
            Some(f) => out.push(f as f32),
            None => return Err(rt(format!("{method}: element {i} is a {}; expected a number", v.type_name()))),
        }
    }
    Ok(out)
}

fn write_flat(lua: &Lua, data: &[f32]) -> mlua::Result<Table> {
    let st = state(lua)?;
    let t = lua.create_table_with_capacity(data.len(), 0)?;
    for (i, v) in data.iter().enumerate() {
        if (i + 1).is_multiple_of(CHECK_EVERY) {
            st.check_time()?;
        }
        t.raw_set(i + 1, *v as f64)?;
    }
    Ok(t)
}

impl Image {
    pub fn shared(img: Arc<value::Image>) -> Self {
        Image { img, _charge: None }
    }

    fn owned(lua: &Lua, img: value::Image) -> mlua::Result<Self> {
        let charge = charge(lua, bytes_of(img.data.len()), "the new image")?;
        Ok(Image { img: Arc::new(img), _charge: Some(charge) })
    }

    /// The pixels for writing: copied (and charged) first while shared.
    fn pixels_mut(&mut self, lua: &Lua) -> mlua::Result<&mut value::Image> {
        if Arc::get_mut(&mut self.img).is_none() {
            self._charge = Some(charge(lua, bytes_of(self.img.data.len()), "copying the image to change it")?);
        }
        Ok(Arc::make_mut(&mut self.img))
    }

    fn offset(&self, m: &str, x: i64, y: i64, c: i64, b: Option<i64>) -> mlua::Result<usize> {
        let i = &self.img;
        let x = index(m, "x", x, i.width)?;
        let y = index(m, "y", y, i.height)?;
        let c = index(m, "channel", c, i.channels)?;
        let b = index(m, "batch index", b.unwrap_or(0), i.batch)?;
        Ok(((b * i.height + y) * i.width + x) * i.channels + c)
    }
}

impl UserData for Image {
    fn add_fields<F: UserDataFields<Self>>(f: &mut F) {
        f.add_field_method_get("width", |_, this| Ok(this.img.width));
        f.add_field_method_get("height", |_, this| Ok(this.img.height));
        f.add_field_method_get("channels", |_, this| Ok(this.img.channels));
        f.add_field_method_get("batch", |_, this| Ok(this.img.batch));
    }

    fn add_methods<M: UserDataMethods<Self>>(m: &mut M) {
        m.add_method("get", |_, this, (x, y, c, b): (i64, i64, i64, Option<i64>)| {
            Ok(this.img.data[this.offset("image:get", x, y, c, b)?] as f64)
        });
        m.add_method_mut("set", |lua, this, (x, y, c, v, b): (i64, i64, i64, f64, Option<i64>)| {
            let o = this.offset("image:set", x, y, c, b)?;
            this.pixels_mut(lua)?.data[o] = v as f32;
            Ok(())
        });
        m.add_method("to_table", |lua, this, ()| write_flat(lua, &this.img.data));
        m.add_method_mut("set_table", |lua, this, t: Table| {
            let data = read_flat(lua, "image:set_table", &t, this.img.data.len())?;
            this.pixels_mut(lua)?.data = data;
            Ok(())
        });
        m.add_method("copy", |_, this, ()| Ok(Image { img: this.img.clone(), _charge: None }));
        m.add_function("map", |lua, (ud, f): (AnyUserData, Function)| {
            // Hold no borrow while calling back into Lua: the function may use this image too.
            let src = ud.borrow::<Image>()?.img.clone();
            let mut out = Image::owned(lua, value::Image::zeros(src.batch, src.height, src.width, src.channels))?;
            let dst = Arc::get_mut(&mut out.img).ok_or_else(|| rt("image:map: internal error"))?;
            map_pixels(
                lua,
                "image:map",
                &f,
                src.channels,
                (src.batch, src.height, src.width),
                &src.data,
                &mut dst.data,
            )?;
            Ok(out)
        });
        m.add_meta_method(MetaMethod::ToString, |_, this, ()| {
            let i = &this.img;
            Ok(format!("Image({}x{}, {} channels, batch {})", i.width, i.height, i.channels, i.batch))
        });
    }
}

impl Mask {
    pub fn shared(mask: Arc<value::Mask>) -> Self {
        Mask { mask, _charge: None }
    }

    fn owned(lua: &Lua, mask: value::Mask) -> mlua::Result<Self> {
        let charge = charge(lua, bytes_of(mask.data.len()), "the new mask")?;
        Ok(Mask { mask: Arc::new(mask), _charge: Some(charge) })
    }

    fn values_mut(&mut self, lua: &Lua) -> mlua::Result<&mut value::Mask> {
        if Arc::get_mut(&mut self.mask).is_none() {
            self._charge = Some(charge(lua, bytes_of(self.mask.data.len()), "copying the mask to change it")?);
        }
        Ok(Arc::make_mut(&mut self.mask))
    }

    fn offset(&self, m: &str, x: i64, y: i64, b: Option<i64>) -> mlua::Result<usize> {
        let k = &self.mask;
        let x = index(m, "x", x, k.width)?;
        let y = index(m, "y", y, k.height)?;
        let b = index(m, "batch index", b.unwrap_or(0), k.batch)?;
        Ok((b * k.height + y) * k.width + x)
    }
}

impl UserData for Mask {
    fn add_fields<F: UserDataFields<Self>>(f: &mut F) {
        f.add_field_method_get("width", |_, this| Ok(this.mask.width));
        f.add_field_method_get("height", |_, this| Ok(this.mask.height));
        f.add_field_method_get("batch", |_, this| Ok(this.mask.batch));
    }

    fn add_methods<M: UserDataMethods<Self>>(m: &mut M) {
        m.add_method("get", |_, this, (x, y, b): (i64, i64, Option<i64>)| {
            Ok(this.mask.data[this.offset("mask:get", x, y, b)?] as f64)
        });
        m.add_method_mut("set", |lua, this, (x, y, v, b): (i64, i64, f64, Option<i64>)| {
            let o = this.offset("mask:set", x, y, b)?;
            this.values_mut(lua)?.data[o] = v as f32;
            Ok(())
        });
        m.add_method("to_table", |lua, this, ()| write_flat(lua, &this.mask.data));
        m.add_method_mut("set_table", |lua, this, t: Table| {
            let data = read_flat(lua, "mask:set_table", &t, this.mask.data.len())?;
            this.values_mut(lua)?.data = data;
            Ok(())
        });
        m.add_method("copy", |_, this, ()| Ok(Mask { mask: this.mask.clone(), _charge: None }));
        m.add_function("map", |lua, (ud, f): (AnyUserData, Function)| {
            let src = ud.borrow::<Mask>()?.mask.clone();
            let mut out = Mask::owned(lua, value::Mask::zeros(src.batch, src.height, src.width))?;
            let dst = Arc::get_mut(&mut out.mask).ok_or_else(|| rt("mask:map: internal error"))?;
            map_pixels(lua, "mask:map", &f, 1, (src.batch, src.height, src.width), &src.data, &mut dst.data)?;
            Ok(out)
        });
        m.add_meta_method(MetaMethod::ToString, |_, this, ()| {
            let k = &this.mask;
            Ok(format!("Mask({}x{}, batch {})", k.width, k.height, k.batch))
        });
    }
}

impl UserData for Opaque {
    fn add_fields<F: UserDataFields<Self>>(f: &mut F) {
        f.add_field_method_get("type", |_, this| Ok(this.0.port_type().name()));
    }
    fn add_methods<M: UserDataMethods<Self>>(m: &mut M) {
        m.add_meta_method(MetaMethod::ToString, |_, this, ()| Ok(format!("{}(opaque)", this.0.port_type())));
    }
}

/// Calls `f(v1, ..., vC, x, y, b)` for every pixel of `src` (`C` values per
/// pixel) and stores the `C` numbers it returns into `dst`.
fn map_pixels(
    lua: &Lua,
    method: &str,
    f: &Function,
    channels: usize,
    (batch, height, width): (usize, usize, usize),
    src: &[f32],
    dst: &mut [f32],
) -> mlua::Result<()> {
    let st = state(lua)?;
    if st.map_depth.get() >= MAX_MAP_DEPTH {
        return Err(rt(format!("{method}: maps nested more than {MAX_MAP_DEPTH} deep")));
    }
    st.map_depth.set(st.map_depth.get() + 1);
    let result = (|| {
        let mut o = 0;
        for b in 0..batch {
            for y in 0..height {
                // Lua code in `f` is under the instruction hook; this catches a huge image with a trivial `f`.
                st.check_time()?;
                for x in 0..width {
                    let mut args = MultiValue::with_capacity(channels + 3);
                    args.extend(src[o..o + channels].iter().map(|v| mlua::Value::Number(*v as f64)));
                    args.extend([x, y, b].map(|i| mlua::Value::Integer(i as i64)));
                    let ret: MultiValue = f.call(args)?;
                    if ret.len() != channels {
                        return Err(rt(format!(
                            "{method}: the function returned {} values at x = {x}, y = {y}; expected {channels} (one per channel)",
                            ret.len()
                        )));
                    }
                    for (k, v) in ret.iter().enumerate() {
                        dst[o + k] = number(v).ok_or_else(|| {
                            rt(format!(
                                "{method}: the function returned a {} at x = {x}, y = {y}; expected numbers",
                                v.type_name()
                            ))
                        })? as f32;
                    }
                    o += channels;
                }
            }
        }
        Ok(())
    })();
    st.map_depth.set(st.map_depth.get() - 1);
    result
}

/// Installs the `image` and `mask` libraries.
pub(crate) fn install(lua: &Lua) -> mlua::Result<()> {
    let image = lua.create_table()?;
    image.raw_set(
        "new",
        lua.create_function(|lua, (w, h, c, b, fill): (i64, i64, Option<i64>, Option<i64>, Option<f64>)| {
            let m = "image.new";
            let (w, h) = (size(m, "width", w, MAX_SIDE)?, size(m, "height", h, MAX_SIDE)?);
            let c = size(m, "channels", c.unwrap_or(3), MAX_CHANNELS)?;
            let b = size(m, "batch", b.unwrap_or(1), MAX_BATCH)?;
            let mut img = image_of(lua, m, b, h, w, c)?;
            img.data.fill(fill.unwrap_or(0.0) as f32);
            Image::owned(lua, img)
        })?,
    )?;
    image.raw_set(
        "from_table",
        lua.create_function(|lua, (t, w, h, c, b): (Table, i64, i64, Option<i64>, Option<i64>)| {
            let m = "image.from_table";
            let (w, h) = (size(m, "width", w, MAX_SIDE)?, size(m, "height", h, MAX_SIDE)?);
            let c = size(m, "channels", c.unwrap_or(3), MAX_CHANNELS)?;
            let b = size(m, "batch", b.unwrap_or(1), MAX_BATCH)?;
            let n = checked_len(m, &[b, h, w, c])?;
            probe(lua, bytes_of(n), "the new image")?;
            let data = read_flat(lua, m, &t, n)?;
            let img = value::Image::from_data(b, h, w, c, data).ok_or_else(|| rt(format!("{m}: size mismatch")))?;
            Image::owned(lua, img)
        })?,
    )?;
    lua.globals().raw_set("image", image)?;

    let mask = lua.create_table()?;
    mask.raw_set(
        "new",
        lua.create_function(|lua, (w, h, b, fill): (i64, i64, Option<i64>, Option<f64>)| {
            let m = "mask.new";
            let (w, h) = (size(m, "width", w, MAX_SIDE)?, size(m, "height", h, MAX_SIDE)?);
            let b = size(m, "batch", b.unwrap_or(1), MAX_BATCH)?;
            let n = checked_len(m, &[b, h, w])?;
            probe(lua, bytes_of(n), "the new mask")?;
            let mut k = value::Mask::zeros(b, h, w);
            k.data.fill(fill.unwrap_or(0.0) as f32);
            Mask::owned(lua, k)
        })?,
    )?;
    mask.raw_set(
        "from_table",
        lua.create_function(|lua, (t, w, h, b): (Table, i64, i64, Option<i64>)| {
            let m = "mask.from_table";
            let (w, h) = (size(m, "width", w, MAX_SIDE)?, size(m, "height", h, MAX_SIDE)?);
            let b = size(m, "batch", b.unwrap_or(1), MAX_BATCH)?;
            let n = checked_len(m, &[b, h, w])?;
            probe(lua, bytes_of(n), "the new mask")?;
            let data = read_flat(lua, m, &t, n)?;
            Mask::owned(lua, value::Mask { batch: b, height: h, width: w, data })
        })?,
    )?;
    lua.globals().raw_set("mask", mask)?;
    Ok(())
}

fn checked_len(method: &str, dims: &[usize]) -> mlua::Result<usize> {
    dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).ok_or_else(|| rt(format!("{method}: {dims:?} is too large")))
}

/// A zeroed image, after checking that it fits the memory limit (so a huge
/// size is an error, not an allocation failure).
fn image_of(lua: &Lua, m: &str, b: usize, h: usize, w: usize, c: usize) -> mlua::Result<value::Image> {
    let n = checked_len(m, &[b, h, w, c])?;
    probe(lua, bytes_of(n), "the new image")?;
    Ok(value::Image::zeros(b, h, w, c))
}

/// Checks that `bytes` more would fit the memory limit, before allocating
/// them (the userdata made from them is charged for real).
fn probe(lua: &Lua, bytes: usize, what: &str) -> mlua::Result<()> {
    charge(lua, bytes, what).map(drop)
}

// ---------------------------------------------------------------- engine values <-> Lua

/// An input value as the plugin sees it.
pub(crate) fn value_to_lua(lua: &Lua, v: &Value) -> mlua::Result<mlua::Value> {
    Ok(match v {
        Value::Int(i) => mlua::Value::Integer(*i),
        Value::Float(f) => mlua::Value::Number(*f),
        Value::Bool(b) => mlua::Value::Boolean(*b),
        Value::String(s) => mlua::Value::String(lua.create_string(s)?),
        Value::Image(i) => mlua::Value::UserData(lua.create_userdata(Image::shared(i.clone()))?),
        Value::Mask(m) => mlua::Value::UserData(lua.create_userdata(Mask::shared(m.clone()))?),
        Value::Opaque(ty, _) => match value_codec(*ty) {
            Some(codec) => {
                let data = codec.encode(v).map_err(|e| rt(format!("cannot pass a {ty} to the plugin: {e}")))?;
                data_to_lua(lua, &data)?
            }
            None => mlua::Value::UserData(lua.create_userdata(Opaque(v.clone()))?),
        },
    })
}

fn lua_type(v: &mlua::Value) -> String {
    match v {
        mlua::Value::UserData(ud) if ud.is::<Image>() => "an Image".into(),
        mlua::Value::UserData(ud) if ud.is::<Mask>() => "a Mask".into(),
        mlua::Value::UserData(ud) => match ud.borrow::<Opaque>() {
            Ok(o) => format!("a {}", o.0.port_type()),
            Err(_) => "a userdata".into(),
        },
        mlua::Value::Integer(_) | mlua::Value::Number(_) => "a number".into(),
        v => format!("a {}", v.type_name()),
    }
}

/// A value a plugin returned for a port of type `ty`; `Err` says what was
/// wrong (the caller names the output).
pub(crate) fn value_from_lua(lua: &Lua, v: mlua::Value, ty: PortType) -> Result<Value, String> {
    let wrong = |v: &mlua::Value, want: &str| format!("expected {want}, got {}", lua_type(v));
    match ty {
        PortType::Int => match v {
            mlua::Value::Integer(i) => Ok(Value::Int(i)),
            mlua::Value::Number(f) if f.fract() == 0.0 && f.abs() < 9.2e18 => Ok(Value::Int(f as i64)),
            v => Err(wrong(&v, "an integer")),
        },
        PortType::Float => match number(&v) {
            Some(f) if f.is_finite() => Ok(Value::Float(f)),
            Some(f) => Err(format!("expected a finite number, got {f}")),
            None => Err(wrong(&v, "a number")),
        },
        PortType::Bool => match v {
            mlua::Value::Boolean(b) => Ok(Value::Bool(b)),
            v => Err(wrong(&v, "a boolean")),
        },
        PortType::String => match v {
            mlua::Value::String(s) => match s.to_str() {
                Ok(s) => Ok(Value::String(s.to_string())),
                Err(_) => Err("the string is not valid UTF-8".into()),
            },
            v => Err(wrong(&v, "a string")),
        },
        PortType::Image => match &v {
            mlua::Value::UserData(ud) => match ud.borrow::<Image>() {
                Ok(i) => Ok(Value::Image(i.img.clone())),
                Err(_) => Err(wrong(&v, "an Image")),
            },
            _ => Err(wrong(&v, "an Image (from the inputs, image.new or image.from_table)")),
        },
        PortType::Mask => match &v {
            mlua::Value::UserData(ud) => match ud.borrow::<Mask>() {
                Ok(m) => Ok(Value::Mask(m.mask.clone())),
                Err(_) => Err(wrong(&v, "a Mask")),
            },
            _ => Err(wrong(&v, "a Mask (from the inputs, mask.new or mask.from_table)")),
        },
        ty => {
            // An opaque handle passed through, or (for types with a codec) a table.
            if let mlua::Value::UserData(ud) = &v
                && let Ok(o) = ud.borrow::<Opaque>()
            {
                return if o.0.port_type() == ty { Ok(o.0.clone()) } else { Err(wrong(&v, &format!("a {ty}"))) };
            }
            match value_codec(ty) {
                Some(codec) => {
                    if !matches!(v, mlua::Value::Table(_)) {
                        return Err(wrong(&v, &format!("a {ty} table")));
                    }
                    let st = state(lua).map_err(|e| e.to_string())?;
                    let data = data_from_lua(&v, 0, &|| st.check_time()).map_err(|e| format!("{ty} table: {e}"))?;
                    codec.decode(&data).map_err(|e| format!("bad {ty} table: {e}"))
                }
                None => Err(wrong(&v, &format!("a {ty} (a {ty} input passed on)"))),
            }
        }
    }
}

pub(crate) fn data_to_lua(lua: &Lua, d: &Data) -> mlua::Result<mlua::Value> {
    Ok(match d {
        Data::Nil => mlua::Value::Nil,
        Data::Bool(b) => mlua::Value::Boolean(*b),
        Data::Int(i) => mlua::Value::Integer(*i),
        Data::Number(f) => mlua::Value::Number(*f),
        Data::String(s) => mlua::Value::String(lua.create_string(s)?),
        Data::Numbers(v) => {
            let t = lua.create_table_with_capacity(v.len(), 0)?;
            for (i, x) in v.iter().enumerate() {
                t.raw_set(i + 1, *x)?;
            }
            mlua::Value::Table(t)
        }
        Data::List(items) => {
            let t = lua.create_table_with_capacity(items.len(), 0)?;
            for (i, x) in items.iter().enumerate() {
                t.raw_set(i + 1, data_to_lua(lua, x)?)?;
            }
            mlua::Value::Table(t)
        }
        Data::Map(m) => {
            let t = lua.create_table_with_capacity(0, m.len())?;
            for (k, x) in m {
                t.raw_set(k.as_str(), data_to_lua(lua, x)?)?;
            }
            mlua::Value::Table(t)
        }
    })
}

/// Plain data from a Lua value: tables whose keys are exactly 1..n are
/// arrays, others must have string keys. Functions, userdata and cycles
/// (caught by the depth limit) are errors.
pub(crate) fn data_from_lua(
    v: &mlua::Value,
    depth: usize,
    tick: &dyn Fn() -> mlua::Result<()>,
) -> Result<Data, String> {
    Ok(match v {
        mlua::Value::Nil => Data::Nil,
        mlua::Value::Boolean(b) => Data::Bool(*b),
        mlua::Value::Integer(i) => Data::Int(*i),
        mlua::Value::Number(f) => Data::Number(*f),
        mlua::Value::String(s) => {
            Data::String(s.to_str().map_err(|_| "a string is not valid UTF-8".to_string())?.to_string())
        }
        mlua::Value::Table(t) => {
            if depth >= MAX_DATA_DEPTH {
                return Err(format!("tables nested more than {MAX_DATA_DEPTH} deep (a cycle?)"));
            }
            let n = t.raw_len();
            let mut count = 0usize;
            let mut all_numbers = true;
            let mut string_keys = true;
            for pair in t.pairs::<mlua::Value, mlua::Value>() {
                let (k, val) = pair.map_err(|e| e.to_string())?;
                count += 1;
                if count.is_multiple_of(CHECK_EVERY) {
                    tick().map_err(|e| e.to_string())?;
                }
                string_keys &= matches!(k, mlua::Value::String(_));
                all_numbers &= number(&val).is_some();
            }
            if count == n && n > 0 {
                if all_numbers {
                    let mut out = Vec::with_capacity(n);
                    for i in 1..=n {
                        let val: mlua::Value = t.raw_get(i).map_err(|e| e.to_string())?;
                        out.push(number(&val).unwrap_or(f64::NAN));
                        if i.is_multiple_of(CHECK_EVERY) {
                            tick().map_err(|e| e.to_string())?;
                        }
                    }
                    Data::Numbers(out)
                } else {
                    let mut out = Vec::with_capacity(n);
                    for i in 1..=n {
                        let val: mlua::Value = t.raw_get(i).map_err(|e| e.to_string())?;
                        out.push(data_from_lua(&val, depth + 1, tick).map_err(|e| format!("[{i}]: {e}"))?);
                    }
                    Data::List(out)
                }
            } else if string_keys {
                let mut out = std::collections::BTreeMap::new();
                for pair in t.pairs::<mlua::LuaString, mlua::Value>() {
                    let (k, val) = pair.map_err(|e| e.to_string())?;
                    let k = k.to_str().map_err(|_| "a key is not valid UTF-8".to_string())?.to_string();
                    let d = data_from_lua(&val, depth + 1, tick).map_err(|e| format!("{k}: {e}"))?;
                    out.insert(k, d);
                }
                Data::Map(out)
            } else {
                return Err("a table mixes array entries and other keys".into());
            }
        }
        v => return Err(format!("a {} cannot be converted", v.type_name())),
    })
}
