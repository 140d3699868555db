"""FlashAttention-2's ``flash_attn.layers``: the rotary embedding its kvcache function applies."""
