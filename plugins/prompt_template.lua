-- PromptTemplate: builds a prompt from a template with {placeholders}.
--
-- An example sdgraph plugin node with only params and a String output. A
-- String output can drive any string param through a link, ComfyUI's
-- "convert widget to input": in the graph, give CLIPTextEncode
--     inputs: { "clip": "ckpt.clip", "text": "prompt.text" }
-- and leave its `text` param out. See plugins/README.md for the API.

node {
  kind = "PromptTemplate",
  category = "text",
  doc = "Fills the {subject}, {style} and {details} placeholders of `template` and tidies the spaces.",
  outputs = {
    text = { type = "String", doc = "The finished prompt." },
  },
  params = {
    template = { type = "string", multiline = true, default = "{style} of {subject}, {details}",
                 doc = "The prompt, with {subject}, {style} and {details} where those params go." },
    subject = { type = "string", default = "a red fox in the snow", doc = "What the picture shows." },
    style = { type = "enum", default = "a watercolor painting",
              values = { "a watercolor painting", "an oil painting", "a photograph", "a pencil sketch" },
              doc = "The medium." },
    details = { type = "string", default = "soft light, highly detailed", doc = "Anything else." },
  },
  run = function(_, params)
    local fill = { subject = params.subject, style = params.style, details = params.details }
    local text = params.template:gsub("{(%w+)}", function(name)
      local v = fill[name]
      if v == nil then
        error("unknown placeholder {" .. name .. "}; use {subject}, {style} or {details}")
      end
      return v
    end)
    -- Collapse runs of spaces and trim, so an empty param leaves no gap.
    text = text:gsub("%s+", " "):gsub("^ ", ""):gsub(" $", "")
    return { text = text }
  end,
}
