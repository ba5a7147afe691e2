-- Vignette: darkens a picture towards its corners.
--
-- An example sdgraph plugin node, meant to be copied. Load a folder of
-- plugins with `sdgraph run --plugins DIR graph.ron` (or list folders in
-- SDGRAPH_PLUGIN_PATH); the API is described in plugins/README.md.
--
-- It shows the whole-image `map`: sdgraph's Rust loop calls the Lua
-- function once per pixel with the pixel's channel values and its x, y
-- (0-based), and stores the values it returns in a new image. A 512x512
-- picture takes about a tenth of a second.

-- 0 below e0, 1 above e1, a smooth S-curve in between.
local function smoothstep(e0, e1, x)
  local t = math.min(math.max((x - e0) / (e1 - e0), 0), 1)
  return t * t * (3 - 2 * t)
end

node {
  kind = "Vignette",
  category = "image/effects",
  doc = "Darkens the picture towards its corners: pixels nearer the centre than `radius` keep their value, "
    .. "the corners are scaled by 1 - strength, with a smooth falloff between.",
  inputs = {
    image = { type = "Image", doc = "The pictures to darken (RGB)." },
  },
  outputs = {
    image = { type = "Image", doc = "The darkened pictures, the same size." },
  },
  params = {
    strength = { type = "float", min = 0, max = 1, default = 0.5,
                 doc = "How dark the corners get: 0 leaves them, 1 makes them black." },
    radius = { type = "float", min = 0, max = 0.95, default = 0.5,
               doc = "Where darkening starts, as a fraction of the centre-to-corner distance." },
  },
  run = function(inputs, params)
    local img = inputs.image
    if img.channels ~= 3 then
      error("Vignette works on RGB pictures; this one has " .. img.channels .. " channels")
    end
    local cx, cy = (img.width - 1) / 2, (img.height - 1) / 2
    local reach = math.max(math.sqrt(cx * cx + cy * cy), 1)
    local strength, radius = params.strength, params.radius
    local out = img:map(function(r, g, b, x, y)
      local dx, dy = x - cx, y - cy
      local f = 1 - strength * smoothstep(radius, 1, math.sqrt(dx * dx + dy * dy) / reach)
      return r * f, g * f, b * f
    end)
    return { image = out }
  end,
}
