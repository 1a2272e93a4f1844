// The reference renderer: @huggingface/jinja renders a chat template the way transformers'
// apply_chat_template does.
//   node hf_chat_template.mjs TOKENIZER_DIR MESSAGES.json add_generation_prompt(0|1) [TEMPLATE_FILE]
// The template is tokenizer_config.json's chat_template unless TEMPLATE_FILE is given.
import fs from "fs";
import path from "path";
import { Template } from "@huggingface/jinja";

const [dir, messagesFile, addGenerationPrompt, templateFile] = process.argv.slice(2);
const config = JSON.parse(fs.readFileSync(path.join(dir, "tokenizer_config.json"), "utf8"));
const token = (t) => (t === null || t === undefined ? "" : typeof t === "string" ? t : t.content);
const source = templateFile ? fs.readFileSync(templateFile, "utf8") : config.chat_template;
const text = new Template(source).render({
  messages: JSON.parse(fs.readFileSync(messagesFile, "utf8")),
  add_generation_prompt: addGenerationPrompt === "1",
  bos_token: token(config.bos_token),
  eos_token: token(config.eos_token),
});
process.stdout.write(text);
