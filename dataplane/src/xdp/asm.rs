//! A small eBPF assembler: one method per instruction form the XDP program uses, and labels, so
//! that a program reads top to bottom and its jump offsets are computed, not counted by hand.
//!
//! Opcodes from include/uapi/linux/bpf.h and bpf_common.h.

use crate::sys::bpf::Insn;

// Instruction classes.
const LD: u8 = 0x00;
const LDX: u8 = 0x01;
const ST: u8 = 0x02;
const STX: u8 = 0x03;
const ALU64: u8 = 0x07;
const JMP: u8 = 0x05;
const JMP32: u8 = 0x06;
// Memory modes.
const IMM: u8 = 0x00;
const MEM: u8 = 0x60;
const ATOMIC: u8 = 0xc0;
// Operand source.
const K: u8 = 0x00;
const X: u8 = 0x08;
// ALU operations.
const ADD: u8 = 0x00;
const AND: u8 = 0x50;
const LSH: u8 = 0x60;
const RSH: u8 = 0x70;
const XOR: u8 = 0xa0;
const MOV: u8 = 0xb0;
// Jump operations.
const JA: u8 = 0x00;
const CALL: u8 = 0x80;
const EXIT: u8 = 0x90;
/// `src_reg` of a 64-bit immediate load that names a map by its descriptor.
const BPF_PSEUDO_MAP_FD: u8 = 1;

/// A register: r0 (return value), r1..r5 (arguments, clobbered by calls), r6..r9 (kept across
/// calls), r10 (frame pointer, read-only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reg(pub u8);

pub const R0: Reg = Reg(0);
pub const R1: Reg = Reg(1);
pub const R2: Reg = Reg(2);
pub const R3: Reg = Reg(3);
pub const R4: Reg = Reg(4);
pub const R5: Reg = Reg(5);
pub const R6: Reg = Reg(6);
pub const R7: Reg = Reg(7);
pub const R8: Reg = Reg(8);
pub const R9: Reg = Reg(9);
pub const R10: Reg = Reg(10);

/// Width of a memory access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Size {
    /// 1 byte.
    B = 0x10,
    /// 2 bytes.
    H = 0x08,
    /// 4 bytes.
    W = 0x00,
    /// 8 bytes.
    DW = 0x18,
}

/// A comparison of a conditional jump (unsigned where it matters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmp {
    Eq = 0x10,
    Gt = 0x20,
    Ge = 0x30,
    Ne = 0x50,
    Lt = 0xa0,
}

/// A jump target, placed once with [`Asm::place`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Label(usize);

/// Why instructions cannot become a program.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AsmError {
    /// A jump to a label that was never placed.
    #[error("a jump targets a label that was never placed")]
    Unplaced,
    /// A jump further than 32767 instructions.
    #[error("a jump is too long for its 16-bit offset")]
    TooFar,
}

/// Instructions being written, with jumps whose offsets are set by [`Asm::finish`].
#[derive(Debug, Default)]
pub struct Asm {
    code: Vec<Insn>,
    labels: Vec<Option<usize>>,
    fixups: Vec<(usize, Label)>,
}

impl Asm {
    /// A new label, to be placed later.
    pub fn label(&mut self) -> Label {
        self.labels.push(None);
        Label(self.labels.len() - 1)
    }

    /// The next instruction is `label`'s target.
    pub fn place(&mut self, label: Label) {
        if let Some(slot) = self.labels.get_mut(label.0) {
            *slot = Some(self.code.len());
        }
    }

    fn push(&mut self, code: u8, dst: Reg, src: Reg, off: i16, imm: i32) {
        self.code.push(Insn::new(code, dst.0, src.0, off, imm));
    }

    fn jump(&mut self, code: u8, dst: Reg, src: Reg, imm: i32, target: Label) {
        self.fixups.push((self.code.len(), target));
        self.push(code, dst, src, 0, imm);
    }

    /// `dst = imm` (sign-extended to 64 bits).
    pub fn mov_imm(&mut self, dst: Reg, imm: i32) {
        self.push(ALU64 | MOV | K, dst, R0, 0, imm);
    }

    /// `dst = src`.
    pub fn mov(&mut self, dst: Reg, src: Reg) {
        self.push(ALU64 | MOV | X, dst, src, 0, 0);
    }

    /// `dst += imm`.
    pub fn add_imm(&mut self, dst: Reg, imm: i32) {
        self.push(ALU64 | ADD | K, dst, R0, 0, imm);
    }

    /// `dst &= imm`.
    pub fn and_imm(&mut self, dst: Reg, imm: i32) {
        self.push(ALU64 | AND | K, dst, R0, 0, imm);
    }

    /// `dst += src`.
    pub fn add_reg(&mut self, dst: Reg, src: Reg) {
        self.push(ALU64 | ADD | X, dst, src, 0, 0);
    }

    /// `dst <<= imm`.
    pub fn lsh_imm(&mut self, dst: Reg, imm: i32) {
        self.push(ALU64 | LSH | K, dst, R0, 0, imm);
    }

    /// `dst >>= imm` (logical).
    pub fn rsh_imm(&mut self, dst: Reg, imm: i32) {
        self.push(ALU64 | RSH | K, dst, R0, 0, imm);
    }

    /// `dst ^= imm`.
    pub fn xor_imm(&mut self, dst: Reg, imm: i32) {
        self.push(ALU64 | XOR | K, dst, R0, 0, imm);
    }

    /// `*(u64 *)(dst + off) += src`, atomically (BPF_ATOMIC with BPF_ADD, the old XADD).
    pub fn atomic_add64(&mut self, dst: Reg, off: i16, src: Reg) {
        self.push(STX | ATOMIC | Size::DW as u8, dst, src, off, i32::from(ADD));
    }

    /// `dst = *(size *)(src + off)` (zero-extended).
    pub fn load(&mut self, size: Size, dst: Reg, src: Reg, off: i16) {
        self.push(LDX | MEM | size as u8, dst, src, off, 0);
    }

    /// `*(size *)(dst + off) = src`.
    pub fn store(&mut self, size: Size, dst: Reg, off: i16, src: Reg) {
        self.push(STX | MEM | size as u8, dst, src, off, 0);
    }

    /// `*(size *)(dst + off) = imm`.
    pub fn store_imm(&mut self, size: Size, dst: Reg, off: i16, imm: i32) {
        self.push(ST | MEM | size as u8, dst, R0, off, imm);
    }

    /// `dst = the map whose descriptor is fd` (a two-instruction 64-bit load the kernel rewrites
    /// into the map's address).
    pub fn load_map(&mut self, dst: Reg, fd: i32) {
        self.push(LD | IMM | Size::DW as u8, dst, Reg(BPF_PSEUDO_MAP_FD), 0, fd);
        self.push(0, R0, R0, 0, 0);
    }

    /// Call helper function number `helper` (arguments in r1..r5, result in r0).
    pub fn call(&mut self, helper: i32) {
        self.push(JMP | CALL, R0, R0, 0, helper);
    }

    /// Return r0.
    pub fn exit(&mut self) {
        self.push(JMP | EXIT, R0, R0, 0, 0);
    }

    /// Go to `target`.
    pub fn goto(&mut self, target: Label) {
        self.jump(JMP | JA, R0, R0, 0, target);
    }

    /// If `dst <cmp> imm` (64-bit, `imm` sign-extended), go to `target`.
    pub fn jump_imm(&mut self, cmp: Cmp, dst: Reg, imm: i32, target: Label) {
        self.jump(JMP | cmp as u8 | K, dst, R0, imm, target);
    }

    /// If `dst <cmp> imm` on the low 32 bits of `dst` (so a `u32` constant compares as itself).
    pub fn jump32_imm(&mut self, cmp: Cmp, dst: Reg, imm: u32, target: Label) {
        self.jump(JMP32 | cmp as u8 | K, dst, R0, imm as i32, target);
    }

    /// If `dst <cmp> src` (64-bit), go to `target`.
    pub fn jump_reg(&mut self, cmp: Cmp, dst: Reg, src: Reg, target: Label) {
        self.jump(JMP | cmp as u8 | X, dst, src, 0, target);
    }

    /// The instructions, with every jump's offset set.
    pub fn finish(mut self) -> Result<Vec<Insn>, AsmError> {
        for (at, label) in std::mem::take(&mut self.fixups) {
            let target = self.labels.get(label.0).copied().flatten().ok_or(AsmError::Unplaced)?;
            let offset = target as i64 - (at as i64 + 1);
            let offset = i16::try_from(offset).map_err(|_| AsmError::TooFar)?;
            if let Some(insn) = self.code.get_mut(at) {
                insn.off = offset;
            }
        }
        Ok(self.code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jumps_land_on_their_labels_forward_and_back() {
        let mut asm = Asm::default();
        let (top, end) = (asm.label(), asm.label());
        asm.place(top);
        asm.mov_imm(R0, 2);
        asm.jump_imm(Cmp::Eq, R0, 2, end);
        asm.goto(top);
        asm.place(end);
        asm.exit();
        let code = asm.finish().unwrap();
        assert_eq!(code[1].off, 1, "skips the goto");
        assert_eq!(code[2].off, -3, "back to the first instruction");
        assert_eq!(code[1].code, 0x15, "BPF_JMP | BPF_JEQ | BPF_K");
        assert_eq!(code[3].code, 0x95, "BPF_JMP | BPF_EXIT");
    }

    #[test]
    fn encodings_match_the_kernel_headers() {
        let mut asm = Asm::default();
        asm.mov(R6, R1);
        asm.load(Size::W, R2, R1, 4);
        asm.store_imm(Size::W, R10, -4, 7);
        asm.load_map(R1, 9);
        asm.call(51);
        asm.atomic_add64(R0, 40, R1);
        asm.xor_imm(R1, 0xffff);
        asm.rsh_imm(R1, 16);
        asm.add_reg(R1, R2);
        let code = asm.finish().unwrap();
        assert_eq!(code[0], Insn::new(0xbf, 6, 1, 0, 0), "mov64 r6, r1");
        assert_eq!(code[1], Insn::new(0x61, 2, 1, 4, 0), "ldxw r2, [r1+4]");
        assert_eq!(code[2], Insn::new(0x62, 10, 0, -4, 7), "stw [r10-4], 7");
        assert_eq!(code[3], Insn::new(0x18, 1, 1, 0, 9), "lddw r1, map fd 9");
        assert_eq!(code[4], Insn::new(0, 0, 0, 0, 0), "second half of lddw");
        assert_eq!(code[5], Insn::new(0x85, 0, 0, 0, 51), "call bpf_redirect_map");
        assert_eq!(code[6], Insn::new(0xdb, 0, 1, 40, 0), "lock *(u64 *)(r0 + 40) += r1");
        assert_eq!(code[7], Insn::new(0xa7, 1, 0, 0, 0xffff), "xor64 r1, 0xffff");
        assert_eq!(code[8], Insn::new(0x77, 1, 0, 0, 16), "rsh64 r1, 16");
        assert_eq!(code[9], Insn::new(0x0f, 1, 2, 0, 0), "add64 r1, r2");
    }

    #[test]
    fn an_unplaced_label_is_an_error() {
        let mut asm = Asm::default();
        let nowhere = asm.label();
        asm.goto(nowhere);
        assert_eq!(asm.finish(), Err(AsmError::Unplaced));
    }
}
