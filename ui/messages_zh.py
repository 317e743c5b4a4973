"""中文 for the messages the server writes into toasts and refusals (issue 15, item 8).

Each entry is an English message as the code writes it, with ``{name}`` for a variable part,
and its Chinese template, which uses the same names. :func:`ui.server_text.localize` matches a
message against the English side and fills the Chinese one; a message that starts with where
the problem is (``notes.json: …``, ``tools[0].function.name: …``) keeps that place and has its
rest translated. How a variable part is matched and translated depends on its name
(:data:`ui.server_text.HOLES`): ``field…`` is a field path, ``exc`` a nested message (translated
itself when known), ``msg`` a :mod:`json` error, ``title`` a chat's title, numbers are digits.

The English texts are the ones the code writes: change a message there and here together
(``tests/test_messages_zh.py`` finds every message in ``ui/*.py`` and checks it is translated).
"""

from __future__ import annotations

MESSAGES: tuple[tuple[str, str], ...] = (
    # --- toast titles (gr.Error / gr.Warning / gr.Info) ---------------------------------------
    ("Error", "错误"),
    ("Warning", "警告"),
    ("Info", "提示"),
    # --- the chat (ui.service, ui.handlers, ui.reply_controls) -----------------------------------
    ("The message is empty: type something first.", "消息为空：请先输入内容。"),
    (
        "The message has {n} characters; the limit is {limit}. Split it, or attach less text.",
        "消息有 {n} 个字符，上限为 {limit}。请拆分消息，或少附加一些文字。",
    ),
    ("This conversation is too long to continue; start a new chat.", "这个对话太长，无法继续；请新建对话。"),
    (
        "The message holds an invalid character (an unpaired surrogate at position {at}); "
        "retype or paste it again as plain text.",
        "消息含有无效字符（位置 {at} 处有未配对的代理字符）；请重新输入，或以纯文本重新粘贴。",
    ),
    ("The model is being switched; try again in a moment.", "正在切换模型；请稍后再试。"),
    ("There is no reply to continue yet: send a message first.", "还没有可以继续的回复：请先发送一条消息。"),
    ("There is no message waiting for a reply.", "没有等待回复的消息：请先发送一条消息。"),
    ("The start of the reply must be text.", "回复开头必须是文字。"),
    ("A reply is still being generated; wait for it or press Stop.", "回复仍在生成中；请等待，或按“停止”。"),
    ("A reply is still being generated: wait for it, or press Stop.", "回复仍在生成中：请等待，或按“停止”。"),
    ("Nothing to regenerate yet: send a message first.", "还没有可以重新生成的回复：请先发送一条消息。"),
    ("Nothing to undo.", "没有可以撤销的内容。"),
    ("Only your own messages can be edited.", "只能编辑你自己发送的消息。"),
    ("An edited message cannot be empty; use Undo to remove it.", "编辑后的消息不能为空；要删除它，请按“撤销”。"),
    ("The message is longer than {limit} characters.", "消息超过 {limit} 个字符，请缩短后再试。"),
    ("Persona '{name}' no longer exists.", "角色“{name}”已不存在；请选择其他角色。"),
    ("You have {n} chats; delete some first.", "你已有 {n} 个会话；请先删除一些。"),
    (
        "The file holds {n} chats and there is room for {lo} more (at most {limit}): delete some first. "
        "Nothing was imported.",
        "文件中有 {n} 个会话，但只能再添加 {lo} 个（最多 {limit} 个）：请先删除一些。没有导入任何会话。",
    ),
    ("Imported {n} chats.", "已导入 {n} 个会话。"),
    ("'conversations' must be a list of chats", "'conversations' 必须是会话列表"),
    ("the archive holds no chats", "归档中没有会话"),
    ("{n} chats; at most {limit} can be kept", "{n} 个会话；最多只能保留 {limit} 个"),
    ("That chat no longer exists.", "这个会话已不存在；请从列表中选择其他会话。"),
    ("A chat name cannot be empty.", "会话名称不能为空；请输入名称。"),
    ("Generation failed: {exc}", "生成失败：{exc}"),
    (
        "The reply reached Max new tokens in the middle of a tool call, so the call was not made: "
        "raise Max new tokens and Regenerate.",
        "回复在工具调用中途达到了最大生成长度，因此没有执行这次调用：请调高最大生成长度后重新生成。",
    ),
    (
        "The server no longer had this page's copy of your chats (it restarted, or the page was idle "
        "for long). Nothing is lost: do that again.",
        "服务器上已没有本页面的会话副本（服务器重启过，或页面闲置太久）。没有任何内容丢失：请再操作一次。",
    ),
    ("{name} is not a configured model.", "{name} 不是已配置的模型；请从列表中选择。"),
    ("There is nothing to restore.", "没有可以恢复的会话。"),
    ("“{title}” was removed. Press ↩ Restore chat to bring it back.", "“{title}”已移除。按“↩ 恢复会话”可以找回。"),
    # --- the chat menu (ui.chat_menu) -----------------------------------------------------------
    (
        "That chat menu action was not understood: open the menu (⋯) again.",
        "无法识别这个会话菜单操作：请重新打开菜单（⋯）。",
    ),
    ("Give the chat a name.", "请为会话命名。"),
    (
        "That chat is no longer in the list (deleted in another tab?).",
        "这个会话已不在列表中（可能已在另一个标签页中删除）。",
    ),
    # --- uploads and imports (ui.handlers, ui.conversations) -------------------------------------
    ("No file was uploaded.", "没有上传文件；请选择要上传的文件。"),
    ("cannot be read as UTF-8 text; export it again as JSON.", "无法作为 UTF-8 文本读取；请重新导出为 JSON。"),
    ("the upload cannot be read; upload the file again.", "无法读取上传的文件；请重新上传。"),
    ("larger than {size} MB", "大于 {size} MB"),
    ("larger than {size} KB", "大于 {size} KB"),
    ("file too large", "文件过大"),
    ("invalid JSON at line {line}, column {col}: {msg}", "JSON 无效（第 {line} 行，第 {col} 列）：{msg}"),
    ("invalid JSON at line {line}: {msg}", "JSON 无效（第 {line} 行）：{msg}"),
    ("cannot be read ({exc})", "无法读取（{exc}）"),
    ("expected an object with a 'messages' list", "应为包含 'messages' 列表的对象"),
    ("more than {n} messages", "超过 {n} 条消息"),
    ("{field} needs a role of user, assistant, tool or event", "{field} 的 role 必须是 user、assistant、tool 或 event"),
    ("{field} must be text", "{field} 必须是文本"),
    ("must be text", "必须是文本"),
    ("{field} holds an unpaired surrogate (not valid text)", "{field} 含有未配对的代理字符（不是有效文本）"),
    ("{field} must be text of at most {limit} characters", "{field} 必须是最多 {limit} 个字符的文本"),
    ("{field} must be a list of 1 to 8 calls", "{field} 必须是包含 1 到 8 个调用的列表"),
    ("{field} must be an object with a name and arguments", "{field} 必须是包含 name 和 arguments 的对象"),
    # --- personas (ui.personas, ui.persona_handlers) ---------------------------------------------
    ("a persona must be a JSON object", "角色必须是一个 JSON 对象"),
    ("{field} must be non-empty text", "{field} 必须是非空文本"),
    (
        "name (max 100) or system_prompt (max 32000 characters) too long",
        "name（最多 100 个字符）或 system_prompt（最多 32000 个字符）过长",
    ),
    ("{field} must be a list of [user, assistant] text pairs", "{field} 必须是由 [用户, 助手] 文本对组成的列表"),
    ("{field} is too long (at most 100 pairs, 64000 characters)", "{field} 过长（最多 100 对、64000 个字符）"),
    ("{field} may only hold {keys}", "{field} 只能包含 {keys}"),
    ("{field} is longer than {limit} characters", "{field} 超过 {limit} 个字符"),
    ("{field} holds an unpaired surrogate, which is not valid text", "{field} 含有未配对的代理字符，不是有效文本"),
    (
        "Personas can't be saved here: this browser has no persona library yet (reload the page).",
        "无法在这里保存角色：这个浏览器还没有角色库（请重新加载页面）。",
    ),
    (
        "holds {n} personas; one import may add at most {limit}. Split the file and import the parts one by one.",
        "包含 {n} 个角色；一次导入最多添加 {limit} 个。请拆分文件，逐个导入。",
    ),
    ("the library would hold more than {limit} personas", "导入后角色库将超过 {limit} 个角色；请先删除一些"),
    ("Only an admin (--admins) can change the shared persona library.", "只有管理员（--admins）可以修改共享角色库。"),
    ("This library already holds {n} personas; delete some first.", "这个角色库已有 {n} 个角色；请先删除一些。"),
    (
        "'{name}' belongs to the shared library; only an admin (--admins) can delete it.",
        "“{name}”属于共享角色库；只有管理员（--admins）可以删除它。",
    ),
    (
        "'{name}' is a built-in persona or does not exist; only your own can be deleted",
        "“{name}”是内置角色或不存在；只能删除你自己的角色",
    ),
    (
        "“{name}” is a built-in persona and cannot be deleted. "
        "Press Duplicate to make your own copy, which you can edit or delete.",
        "“{name}”是内置角色，不能删除。按“复制”可以得到你自己的副本，副本可以编辑或删除。",
    ),
    ("Pick a persona to export first.", "请先选择要导出的角色。"),
    # --- sampler presets (ui.presets) --------------------------------------------------------------
    ("Give the preset a name first.", "请先为预设命名。"),
    ("“{name}” is a built-in preset; choose another name.", "“{name}”是内置预设；请换一个名称。"),
    (
        "This browser keeps at most {n} presets; save over one of them (same name).",
        "这个浏览器最多保存 {n} 个预设；请覆盖其中一个（使用相同名称）。",
    ),
    (
        "Preset “{name}” saved for your login (every browser you sign in from).",
        "预设“{name}”已为你的登录账号保存（你登录的每个浏览器都能使用）。",
    ),
    ("Preset “{name}” saved in this browser.", "预设“{name}”已保存在这个浏览器中。"),
    # --- who may change shared things (ui.owner.Access.admin_rule) --------------------------------
    ("Only an admin (--admins) can do this.", "只有管理员（--admins）可以这样做。"),
    (
        "Only an admin can do this: restart the app with --admins USER[,USER…] naming --auth users.",
        "只有管理员可以这样做：请用 --admins USER[,USER…] 重新启动应用，列出 --auth 中的用户。",
    ),
    ("This needs an API key login.", "这需要用 API 密钥登录。"),
    (
        "Without logins nobody can change what all users share: "
        "start the app with --auth USER:PASSWORD --admins USER to allow it.",
        "没有登录时，任何人都不能修改所有用户共享的内容：请用 --auth USER:PASSWORD --admins USER 启动应用以允许此操作。",
    ),
    # --- the Tools tab's schemas (ui.tool_loop, ui.tools_panel) -----------------------------------
    ("the schemas are longer than {limit} characters", "函数定义超过 {limit} 个字符"),
    ("at most {limit} tools can be given ({n} were)", "最多只能提供 {limit} 个工具（提供了 {n} 个）"),
    ("expected an object with name, description and parameters", "应为包含 name、description 和 parameters 的对象"),
    ("unknown key {key} (allowed: {keys})", "未知的键 {key}（允许：{keys}）"),
    ("unknown key {key} (expected type and function)", "未知的键 {key}（应为 type 和 function）"),
    ("needs 1-64 letters, digits, _ or - (got {tool})", "需要 1-64 个字母、数字、_ 或 -（实际为 {tool}）"),
    (
        'expected an object like {"type": "function", "function": {...}}',
        '应为形如 {"type": "function", "function": {...}} 的对象',
    ),
    ("only 'function' tools are supported, not {kind}", "只支持 'function' 类型的工具，不支持 {kind}"),
    ("{tool} is a built-in tool; enable it above instead", "{tool} 是内置工具；请在上方启用它"),
    ("{tool} is given twice", "{tool} 出现了两次；请删除其中一个"),
    (
        'must be a JSON Schema object ({"type": "object", ...})',
        '必须是 JSON Schema 对象（{"type": "object", ...}）',
    ),
    ("must map each parameter name to its schema", "必须把每个参数名映射到它的 schema"),
    ("must list names that are in properties", "只能列出 properties 中的名称"),
    # --- from the model server (qwen_core), shown by the chat's handlers --------------------------
    (
        "The server is busy ({active} replies running, {waiting} waiting). Try again in a moment.",
        "服务器繁忙（{active} 条回复正在生成，{waiting} 条在等待）。请稍后再试。",
    ),
    (
        "Waited too long for a free slot; the server is overloaded. Try again later.",
        "等待空闲名额的时间过长，服务器已过载。请稍后再试。",
    ),
    (
        "Too many requests: the limit is {limit} per minute per user. Try again shortly.",
        "请求过多：每位用户每分钟最多 {limit} 次。请稍后再试。",
    ),
    (
        "The prompt is {n} tokens but {name} handles at most {limit}. "
        "Shorten the message, or lower max_window_size so fewer past turns are kept.",
        "提示有 {n} 个 token，但 {name} 最多处理 {limit} 个。请缩短消息，或调低 max_window_size 以少保留一些历史轮次。",
    ),
    (
        "The prompt is {n} tokens but {name} handles at most {limit}.",
        "提示有 {n} 个 token，但 {name} 最多处理 {limit} 个。",
    ),
    (
        "The model ran out of memory while generating this reply. Shorten the conversation "
        "(lower max_window_size), lower max_new_tokens, or load a smaller or quantized variant.",
        "生成这条回复时模型内存不足。请缩短对话（调低 max_window_size）、调低 max_new_tokens，或加载更小的或量化的版本。",
    ),
    (
        "No token is allowed at this point of the reply: the output constraint, logit_bias and "
        "min_tokens/ignore_eos together exclude every token. Loosen one of them.",
        "回复此处不允许任何 token：输出约束、logit_bias 与 min_tokens/ignore_eos 合在一起排除了所有 token。请放宽其中一项。",
    ),
    ("Another model switch is in progress; wait for it to finish.", "另一个模型切换正在进行；请等待它完成。"),
    ("{name} is already loaded.", "{name} 已经加载。"),
    ("Loaded {name}.", "已加载 {name}。"),
    ("Could not load {name}: {exc}. {other} is loaded again.", "无法加载 {name}：{exc}。已重新加载 {other}。"),
    ("Could not load {name}: {exc}", "无法加载 {name}：{exc}"),
    # qwen_core.settings: a persona's or the sliders' generation settings out of range
    ("{field} must be a finite number, got {value}", "{field} 必须是有限的数，实际为 {value}"),
    ("{field} must be between {lo} and {hi}, got {value}", "{field} 必须在 {lo} 到 {hi} 之间，实际为 {value}"),
    (
        "top_p must be above 0 (use temperature 0 for greedy decoding)",
        "top_p 必须大于 0（贪心解码请把 temperature 设为 0）",
    ),
    ("{field} must be an integer, got {value}", "{field} 必须是整数，实际为 {value}"),
    ("seed must be an integer in [0, 2**63), got {value}", "seed 必须是 [0, 2**63) 中的整数，实际为 {value}"),
    (
        "min_tokens ({n}) must not exceed max_new_tokens ({limit}); lower it",
        "min_tokens（{n}）不能超过 max_new_tokens（{limit}）；请调低它",
    ),
)

# Where a message says the problem is ("<place>: <message>"), when the place is a word of ours.
PLACES = {
    "persona editor": "角色编辑器",
    "persona": "角色",
    "import": "导入",
    "Example dialogue": "示例对话",
    "Your tools (Tools tab)": "你的工具（工具页）",
}

# The json module's error messages (``JSONDecodeError.msg``), for "invalid JSON at line …: {msg}".
JSON_ERRORS = {
    "Expecting value": "此处应为一个值",
    "Expecting property name enclosed in double quotes": "此处应为双引号括起的属性名",
    "Expecting ',' delimiter": "此处缺少逗号 ','",
    "Expecting ':' delimiter": "此处缺少冒号 ':'",
    "Unterminated string starting at": "字符串没有结束",
    "Extra data": "JSON 之后还有多余内容",
    "Invalid \\uXXXX escape": "无效的 \\uXXXX 转义",
    "Illegal trailing comma before end of object": "对象末尾有多余的逗号",
    "Illegal trailing comma before end of array": "数组末尾有多余的逗号",
}
# Those with a part of the text in them: the English start, and the Chinese before that part.
JSON_ERROR_STARTS = {
    "Invalid control character ": "无效的控制字符 ",
    "Invalid \\escape: ": "无效的转义：",
}

# A chat's title as the code names an untitled one.
TITLES = {"Chat": "对话", "New chat": "新对话"}
