-- LatentAddNoise: adds seeded Gaussian noise to a latent.
--
-- An example sdgraph plugin node working on LATENT values. A latent reaches
-- Lua as a plain table
--     { shape = { B, C, H, W }, samples = { ... B*C*H*W numbers ... },
--       noise_mask = { shape = {...}, samples = {...} } or nil }
-- with `samples` a 1-based array in [B, C, H, W] order (the value at
-- batch b, channel c, row y, column x, all 0-based, is
-- samples[((b * C + c) * H + y) * W + x + 1]). Return the same kind of
-- table (changed in place, as here, or new). See plugins/README.md.

node {
  kind = "LatentAddNoise",
  category = "latent",
  doc = "Adds `strength` times seeded standard Gaussian noise to every latent value (the noise mask, if any, "
    .. "is kept): a cheap way to vary an img2img starting point before KSampler.",
  inputs = {
    samples = { type = "Latent", doc = "The latents to perturb." },
  },
  outputs = {
    latent = { type = "Latent", doc = "The latents plus noise." },
  },
  params = {
    seed = { type = "int", min = 0, max = 9007199254740991, default = 0, doc = "The noise's seed." },
    strength = { type = "float", min = 0, max = 10, default = 0.2, doc = "Standard deviation of the added noise." },
  },
  run = function(inputs, params)
    local latent = inputs.samples
    local s, k, n = latent.samples, params.strength, #latent.samples
    -- Every run starts from a fresh Lua state; seeding makes the noise depend on `seed` only.
    math.randomseed(params.seed)
    for i = 1, n, 2 do
      -- Box-Muller: two independent normal values from two uniform ones.
      local r = math.sqrt(-2 * math.log(1 - math.random()))
      local a = 2 * math.pi * math.random()
      s[i] = s[i] + k * r * math.cos(a)
      if i < n then
        s[i + 1] = s[i + 1] + k * r * math.sin(a)
      end
    end
    return { latent = latent }
  end,
}
