-- SPDX-License-Identifier: MIT
-- pandoc Lua filter: turns a docs/*.md page written for GitHub in man-page
-- form ("# NAME(S)" title, "## NAME", "## SYNOPSIS", ...) into man(7) that
-- mandoc -T lint accepts and whatis/apropos can index. Run by
-- docs/render-man.sh, which sets the metadata read here: man-name,
-- man-section and man-pages (the SOURCE.md=NAME.S pairs of every page, so a
-- link to another page becomes a NAME(S) cross-reference).

local name, section
local pages = {}

local function fail(msg)
	io.stderr:write('man.lua: ' .. msg .. '\n')
	os.exit(1)
end

-- Text placed raw into the roff output: pandoc 2.17 writes code as \f[V] and
-- \f[C], fonts mandoc does not know, and leaves '-' unescaped, so a copied
-- option would not be a hyphen-minus on every formatter.
local ascii = { ['…'] = '...', ['×'] = '\\[tmu]', ['–'] = '\\[en]', ['—'] = '\\[em]' }

local function roff(s)
	s = s:gsub('\\', '\\e')
	s = s:gsub('%-', '\\-')
	s = s:gsub("'", '\\(aq')
	s = s:gsub('`', '\\(ga')
	-- Characters with an ASCII form where the terminal has no UTF-8 (groff
	-- warns about any \[uXXXX] it cannot show there).
	s = s:gsub('[\xC2-\xF4][\x80-\xBF]*', function(c)
		return ascii[c] or string.format('\\[u%04X]', utf8.codepoint(c))
	end)
	return s
end

-- Code is set in bold and may break after a comma (\:), so that a long
-- option string does not stretch its line. It is not hyphenated: \% in
-- front of each of its words, but only where a word starts (after a space
-- or at the start of a line), since inside a word \% marks a hyphenation
-- point instead.
local function code_inline(c, word_start)
	local s = roff(c.text):gsub(' ', ' \\%%'):gsub(',', ',\\:')
	return pandoc.RawInline('man', '\\f[B]' .. (word_start and '\\%' or '') .. s .. '\\f[R]')
end

local function code_inlines(inlines)
	for i, x in ipairs(inlines) do
		if x.t == 'Code' then
			local prev = inlines[i - 1]
			inlines[i] = code_inline(x, prev == nil or prev.t == 'Space' or
				prev.t == 'SoftBreak' or prev.t == 'LineBreak')
		end
	end
	return inlines
end

-- Indented by 4 as in man-pages(7) rather than the 7 of pandoc's .IP, so
-- that commands of up to 69 columns fit an 80-column terminal; SYNOPSIS
-- lines are not indented at all.
local function code_block(c, indent)
	local out = {}
	for line in (c.text .. '\n'):gmatch('(.-)\n') do
		line = roff(line)
		-- A line starting with '.' would be a request.
		if line:match('^%.') then
			line = '\\&' .. line
		end
		out[#out + 1] = line
	end
	local body = '.nf\n' .. table.concat(out, '\n') .. '\n.fi'
	if indent == 0 then
		return pandoc.RawBlock('man', body)
	end
	return pandoc.RawBlock('man', '.PP\n.RS 4\n' .. body .. '\n.RE')
end

-- A relative link to another page becomes "NAME(S)"; a relative link to any
-- other document keeps only its text (those documents are not installed).
local function link(l)
	if l.target:match('^%a[%w+.-]*:') then
		return nil
	end
	local page = pages[l.target]
	if page then
		local n, s = page:match('^(.+)%.(%w+)$')
		return { pandoc.RawInline('man', '\\f[B]' .. roff(n) .. '\\f[R](' .. s .. ')') }
	end
	return l.content
end

-- "- `-o`, `--output FILE`: text" items become .TP entries with the part
-- before the first colon as the tag, as option lists are in man pages.
local function split_item(blocks)
	local first = blocks[1]
	if not first or (first.t ~= 'Para' and first.t ~= 'Plain') then
		return nil
	end
	local inl = first.content
	if #inl == 0 or inl[1].t ~= 'Code' then
		return nil
	end
	for i, x in ipairs(inl) do
		if x.t == 'Str' and x.text:sub(-1) == ':' then
			local term = pandoc.List()
			for j = 1, i - 1 do
				term:insert(inl[j])
			end
			if #x.text > 1 then
				term:insert(pandoc.Str(x.text:sub(1, -2)))
			end
			local rest = pandoc.List()
			for j = i + 1, #inl do
				rest:insert(inl[j])
			end
			while #rest > 0 and rest[1].t == 'Space' do
				rest:remove(1)
			end
			local def = pandoc.List({ pandoc.Para(rest) })
			for j = 2, #blocks do
				def:insert(blocks[j])
			end
			return term, def
		elseif x.t ~= 'Code' and x.t ~= 'Space' and x.t ~= 'SoftBreak' and
			not (x.t == 'Str' and (x.text == ',' or x.text == ';')) then
			return nil
		end
	end
	return nil
end

local function option_list(list)
	local items = {}
	for _, item in ipairs(list.content) do
		local term, def = split_item(item)
		if not term then
			return nil
		end
		items[#items + 1] = { term, { def } }
	end
	return pandoc.DefinitionList(items)
end

-- GitHub tables carry no widths, so tbl would give every column an equal
-- share of the line and long cells would run past it. A two-column table
-- that does not fit keeps its first column's natural width and gives the
-- rest to the second; a wider one becomes a list, one entry per row, with
-- the cells under their column headings, as tbl can only hyphenate the long
-- messages of such tables into narrow columns.
local LINE = 64

local function cell_text(cell)
	return utf8.len(pandoc.utils.stringify(cell.contents)) or 1
end

local function table_rows(t)
	local rows = {}
	for _, body in ipairs(t.bodies) do
		for _, row in ipairs(body.body) do
			rows[#rows + 1] = row
		end
	end
	return rows
end

local function table_list(t, rows)
	local heads = t.head.rows[1] and t.head.rows[1].cells or {}
	local items = {}
	for _, row in ipairs(rows) do
		local def = pandoc.List()
		for i = 2, #row.cells do
			local body = pandoc.utils.blocks_to_inlines(row.cells[i].contents)
			if #body > 0 then
				local para = pandoc.List()
				if heads[i] then
					para:extend(pandoc.utils.blocks_to_inlines(heads[i].contents))
					para:extend({ pandoc.Str(':'), pandoc.Space() })
				end
				para:extend(body)
				def:insert(pandoc.Para(para))
			end
		end
		items[#items + 1] = { pandoc.utils.blocks_to_inlines(row.cells[1].contents), { def } }
	end
	return pandoc.DefinitionList(items)
end

local function fit_table(t)
	local n = #t.colspecs
	local rows = table_rows(t)
	local need = {}
	for i = 1, n do
		need[i] = 1
	end
	local function measure(row)
		for i, cell in ipairs(row.cells) do
			need[i] = math.max(need[i], cell_text(cell))
		end
	end
	for _, row in ipairs(t.head.rows) do
		measure(row)
	end
	for _, row in ipairs(rows) do
		measure(row)
	end
	local total = 0
	for i = 1, n do
		total = total + need[i]
	end
	-- Three columns of gap between cells.
	if total <= LINE - 3 * (n - 1) then
		return nil
	end
	if n ~= 2 then
		return table_list(t, rows)
	end
	-- pandoc sizes a column as this fraction of a 70-column line.
	local first = math.min(need[1], LINE // 3)
	t.colspecs[1] = { t.colspecs[1][1], first / 70 }
	t.colspecs[2] = { t.colspecs[2][1], (LINE - 3 - first) / 70 }
	return t
end

local function fix_name(blocks)
	-- The NAME line "snapsave - text": whatis wants the dash as \-.
	for i, b in ipairs(blocks) do
		if b.t == 'Header' and pandoc.utils.stringify(b) == 'NAME' then
			local p = blocks[i + 1]
			if not p or (p.t ~= 'Para' and p.t ~= 'Plain') then
				fail('NAME section has no text')
			end
			for j, x in ipairs(p.content) do
				if x.t == 'Str' and x.text == '-' then
					if pandoc.utils.stringify(pandoc.List({ table.unpack(p.content, 1, j - 1) })):match(
						'^' .. name:gsub('%p', '%%%0')) == nil then
						fail('NAME line does not start with ' .. name)
					end
					p.content[j] = pandoc.RawInline('man', '\\-')
					return
				end
			end
			fail('NAME line has no " - " between the name and the description')
		end
	end
	fail('no NAME section')
end

function Pandoc(doc)
	name = pandoc.utils.stringify(doc.meta['man-name'] or '')
	section = pandoc.utils.stringify(doc.meta['man-section'] or '')
	if name == '' or section == '' then
		fail('man-name and man-section metadata are required')
	end
	for pair in pandoc.utils.stringify(doc.meta['man-pages'] or ''):gmatch('%S+') do
		local src, page = pair:match('^(.+)=(.+)$')
		if src then
			pages[src] = page
		end
	end

	local blocks = pandoc.List()
	local titled = false
	for _, b in ipairs(doc.blocks) do
		if b.t == 'RawBlock' and b.format == 'html' then
			-- The SPDX comment.
		elseif b.t == 'Header' and b.level == 1 then
			local want = name .. '(' .. section .. ')'
			if titled or pandoc.utils.stringify(b) ~= want then
				fail('expected one title "# ' .. want .. '", found "' ..
					pandoc.utils.stringify(b) .. '"')
			end
			titled = true
		else
			blocks:insert(b)
		end
	end
	if not titled then
		fail('no "# ' .. name .. '(' .. section .. ')" title')
	end
	fix_name(blocks)
	for i, b in ipairs(blocks) do
		if b.t == 'CodeBlock' and i > 1 and blocks[i - 1].t == 'Header' and
			pandoc.utils.stringify(blocks[i - 1]) == 'SYNOPSIS' then
			blocks[i] = code_block(b, 0)
		end
	end

	doc.blocks = blocks
	-- Lists and tables are read as text first, before code becomes raw roff.
	doc = doc:walk({
		Link = link,
		BulletList = option_list,
		Table = fit_table,
		Header = function(h)
			h.level = h.level - 1
			return h
		end,
	})
	doc = doc:walk({ Inlines = code_inlines, CodeBlock = function(c) return code_block(c, 4) end })
	return doc
end
