//! Kernel struct layouts from `/sys/kernel/btf/vmlinux`.
//!
//! rustc emits no CO-RE relocations, so the programs read fields at offsets computed here at load
//! time and handed over in [`Config`]. Nothing is hard-coded: layouts differ between kernels
//! (`task_struct.exit_code` is 2312 on 6.1, 1164 on 6.18) and fields get renamed
//! (`kernfs_node.parent` became `__parent`).
use anyhow::{anyhow, bail, Context, Result};
use btf_rs::{Btf, BtfType, Type};
use crashwatch_common::{Config, Offsets, NO_OFFSET};

pub const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

/// What the loader needs to know about the running kernel.
pub struct KernelLayout {
    pub config: Config,
    /// `sched_process_exit` has the `group_dead` argument (6.16+).
    pub exit_has_group_dead: bool,
    /// `struct pt_regs` member names in layout order, for naming the raw register copy.
    pub pt_regs_names: Vec<(String, u32)>,
    /// The kernel has uprobe_multi links (6.6+). Its BPF_PROG_LOAD takes the attach type
    /// without checking it on older kernels, so the type's presence is what tells.
    pub has_uprobe_multi: bool,
}

/// Reads the running kernel's layouts; `pending_window_ns` and `args_max` are the agent's
/// settings the programs also need.
pub fn load(pending_window_ns: u64, args_max: u32, stack_copy: u32) -> Result<KernelLayout> {
    // Mapped, the file is read only where a lookup goes (0.05 s here instead of 0.19 s for
    // the whole parse); kernels whose sysfs file cannot be mapped (before 6.14) are read.
    let btf = Btf::from_file_with_backend(VMLINUX, btf_rs::Backend::Mmap)
        .or_else(|_| Btf::from_file(VMLINUX))
        .with_context(|| {
            format!(
                "reading {VMLINUX}: crashwatch needs a kernel built with CONFIG_DEBUG_INFO_BTF=y"
            )
        })?;
    let k = Kernel { btf };
    let memory_id = k.enum_value("cgroup_subsys_id", "memory_cgrp_id")?;
    let (hop1, hop2) = if cgroup2_only() {
        (k.off("css_set", "dfl_cgrp")?, NO_OFFSET)
    } else {
        // Hybrid/v1 hosts: the memory controller's hierarchy is where limits and pods live.
        (
            k.off("css_set", "subsys")? + 8 * memory_id,
            k.off("cgroup_subsys_state", "cgroup")?,
        )
    };
    // The inode's change time moved: `i_ctime` (timespec64) before 6.6, `__i_ctime` until
    // 6.11, then `i_ctime_sec` and `i_ctime_nsec`.
    let (ctime_sec, ctime_nsec) = match k.off("inode", "i_ctime_sec") {
        Ok(sec) => (sec, k.off("inode", "i_ctime_nsec")?),
        Err(_) => {
            let ts = k
                .off("inode", "__i_ctime")
                .or_else(|_| k.off("inode", "i_ctime"))?;
            (
                ts + k.off("timespec64", "tv_sec")?,
                ts + k.off("timespec64", "tv_nsec")?,
            )
        }
    };
    // `mm->rss_stat`: an array of `percpu_counter` from 6.2, a `struct mm_rss_stat` of
    // `atomic_long_t`s before.
    let (rss_stride, rss_count) = if k.named_struct("mm_rss_stat").is_ok() {
        (8, k.off("mm_rss_stat", "count").unwrap_or(0))
    } else {
        (
            k.struct_size("percpu_counter").unwrap_or(NO_OFFSET),
            k.off("percpu_counter", "count").unwrap_or(NO_OFFSET),
        )
    };
    let off = Offsets {
        task_tgid: k.off("task_struct", "tgid")?,
        task_pid: k.off("task_struct", "pid")?,
        task_real_parent: k.off("task_struct", "real_parent")?,
        task_group_leader: k.off("task_struct", "group_leader")?,
        task_start_time: k.off("task_struct", "start_time")?,
        task_real_cred: k.off("task_struct", "real_cred")?,
        task_signal: k.off("task_struct", "signal")?,
        task_exit_code: k.off("task_struct", "exit_code")?,
        task_mm: k.off("task_struct", "mm")?,
        task_cgroups: k.off("task_struct", "cgroups")?,
        task_comm: k.off("task_struct", "comm")?,
        cred_uid: k.off("cred", "uid")?,
        signal_group_exit_code: k.off("signal_struct", "group_exit_code")?,
        signal_live: k.off("signal_struct", "live")?,
        mm_arg_start: k.off("mm_struct", "arg_start")?,
        mm_arg_end: k.off("mm_struct", "arg_end")?,
        mm_start_code: k.off("mm_struct", "start_code")?,
        mm_end_code: k.off("mm_struct", "end_code")?,
        mm_saved_auxv: k.off("mm_struct", "saved_auxv").unwrap_or(NO_OFFSET),
        mm_exe_file: k.off("mm_struct", "exe_file")?,
        bprm_filename: k.off("linux_binprm", "filename")?,
        bprm_file: k.off("linux_binprm", "file")?,
        file_inode: k.off("file", "f_inode")?,
        inode_ino: k.off("inode", "i_ino")?,
        inode_sb: k.off("inode", "i_sb")?,
        inode_size: k.off("inode", "i_size")?,
        inode_ctime_sec: ctime_sec,
        inode_ctime_nsec: ctime_nsec,
        sb_dev: k.off("super_block", "s_dev")?,
        siginfo_code: k.off("kernel_siginfo", "si_code")?,
        siginfo_fields: k.off("kernel_siginfo", "_sifields")?,
        ksig_handler: k.off("k_sigaction", "sa")? + k.off("sigaction", "sa_handler")?,
        pt_regs_size: k.struct_size("pt_regs")?,
        cgroup_hop1: hop1,
        cgroup_hop2: hop2,
        cgroup_kn: k.off("cgroup", "kn")?,
        kn_name: k.off("kernfs_node", "name")?,
        kn_parent: k
            .off("kernfs_node", "__parent")
            .or_else(|_| k.off("kernfs_node", "parent"))?,
        task_nsproxy: k.off("task_struct", "nsproxy")?,
        nsproxy_mnt_ns: k.off("nsproxy", "mnt_ns")?,
        mnt_ns_inum: k.off("mnt_namespace", "ns")? + k.off("ns_common", "inum")?,
        file_f_path: k.off("file", "f_path")?,
        path_mnt: k.off("path", "mnt")?,
        path_dentry: k.off("path", "dentry")?,
        dentry_parent: k.off("dentry", "d_parent")?,
        dentry_name: k.off("dentry", "d_name")? + k.off("qstr", "name")?,
        vfsmount_root: k.off("vfsmount", "mnt_root")?,
        mount_mnt: k.off("mount", "mnt")?,
        mount_parent: k.off("mount", "mnt_parent")?,
        mount_mountpoint: k.off("mount", "mnt_mountpoint")?,
        task_fs: k.off("task_struct", "fs")?,
        fs_root: k.off("fs_struct", "root")?,
        // OOM facts: a kernel without them still loads, and its reports say less.
        signal_oom_score_adj: k.off("signal_struct", "oom_score_adj").unwrap_or(NO_OFFSET),
        mm_rss_stat: k.off("mm_struct", "rss_stat").unwrap_or(NO_OFFSET),
        rss_stride,
        rss_count,
        css_set_memory: k
            .off("css_set", "subsys")
            .map(|o| o + 8 * memory_id)
            .unwrap_or(NO_OFFSET),
        memcg_css: k.off("mem_cgroup", "css").unwrap_or(NO_OFFSET),
        memcg_memory: k.off("mem_cgroup", "memory").unwrap_or(NO_OFFSET),
        counter_usage: k.off("page_counter", "usage").unwrap_or(NO_OFFSET),
        counter_max: k.off("page_counter", "max").unwrap_or(NO_OFFSET),
        counter_parent: k.off("page_counter", "parent").unwrap_or(NO_OFFSET),
        task_self_exec_id: k.off("task_struct", "self_exec_id")?,
        task_nvcsw: k.off("task_struct", "nvcsw")?,
        regs_ip: k.off("pt_regs", "ip")?,
        regs_sp: k.off("pt_regs", "sp")?,
    };
    let exit_args = k.tracepoint_args("sched_process_exit")?;
    let oom_arg_is_task = match k.tracepoint_args("mark_victim") {
        Ok(args) => args.first().is_some_and(|t| matches!(t, Type::Ptr(_))),
        Err(_) => false,
    };
    let pt_regs_names = k.members("pt_regs")?;
    let has_uprobe_multi = k.named_struct("bpf_uprobe_multi_link").is_ok();
    Ok(KernelLayout {
        config: Config {
            off,
            oom_arg_is_task: oom_arg_is_task as u32,
            args_max: args_max.min(crashwatch_common::ARGS_LEN as u32),
            pending_window_ns,
            stack_copy: stack_copy.min(crashwatch_common::STACK_COPY_MAX as u32),
            exec_all: 0,
            guard_copies: crashwatch_common::COPIES,
            failpoint_spin: 0,
            generation: 0,
            failpoint_copies: 0,
            failpoint_skip_exit: 0,
        },
        exit_has_group_dead: exit_args.len() >= 2,
        pt_regs_names,
        has_uprobe_multi,
    })
}

/// Whether /sys/fs/cgroup is the unified hierarchy alone (else v1 or hybrid: reports name
/// the memory controller's cgroup).
pub fn cgroup2_only() -> bool {
    const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
    super::fs_magic(std::path::Path::new("/sys/fs/cgroup")) == Some(CGROUP2_SUPER_MAGIC)
}

struct Kernel {
    btf: Btf,
}

impl Kernel {
    fn named_struct(&self, name: &str) -> Result<btf_rs::Struct> {
        for t in self.btf.resolve_types_by_name(name).unwrap_or_default() {
            match t {
                Type::Struct(s) | Type::Union(s) if !s.members.is_empty() => return Ok(s),
                _ => {}
            }
        }
        bail!("kernel BTF has no struct {name}")
    }

    fn struct_size(&self, name: &str) -> Result<u32> {
        Ok(self.named_struct(name)?.size() as u32)
    }

    /// Byte offset of `field` in struct `name`, looking through anonymous members.
    fn off(&self, name: &str, field: &str) -> Result<u32> {
        let s = self.named_struct(name)?;
        self.find(&s, field)?
            .ok_or_else(|| anyhow!("kernel BTF: struct {name} has no field {field}"))
    }

    fn find(&self, s: &btf_rs::Struct, field: &str) -> Result<Option<u32>> {
        for m in &s.members {
            let bytes = m.bit_offset() / 8;
            let mname = self.btf.resolve_name(m).unwrap_or_default();
            if mname == field {
                return Ok(Some(bytes));
            }
            if mname.is_empty() {
                if let Some(Type::Struct(inner) | Type::Union(inner)) = self.resolve(m)? {
                    if let Some(o) = self.find(&inner, field)? {
                        return Ok(Some(bytes + o));
                    }
                }
            }
        }
        Ok(None)
    }

    /// The type behind `t`, skipping typedefs and qualifiers.
    fn resolve(&self, t: &dyn BtfType) -> Result<Option<Type>> {
        let mut ty = self.btf.resolve_chained_type(t)?;
        loop {
            ty = match &ty {
                Type::Typedef(x) => self.btf.resolve_chained_type(x)?,
                Type::Const(x) | Type::Volatile(x) | Type::Restrict(x) => {
                    self.btf.resolve_chained_type(x)?
                }
                Type::TypeTag(x) => self.btf.resolve_chained_type(x)?,
                _ => return Ok(Some(ty)),
            };
        }
    }

    fn members(&self, name: &str) -> Result<Vec<(String, u32)>> {
        let s = self.named_struct(name)?;
        let mut out = Vec::new();
        for m in &s.members {
            let mut name = self.btf.resolve_name(m).unwrap_or_default();
            // Newer kernels wrap cs/ss in anonymous unions: name them after their first member.
            if name.is_empty() {
                if let Some(Type::Struct(u) | Type::Union(u)) = self.resolve(m)? {
                    name = u
                        .members
                        .first()
                        .and_then(|f| self.btf.resolve_name(f).ok())
                        .unwrap_or_default();
                }
            }
            if !name.is_empty() {
                out.push((name, m.bit_offset() / 8));
            }
        }
        Ok(out)
    }

    fn enum_value(&self, name: &str, member: &str) -> Result<u32> {
        for t in self.btf.resolve_types_by_name(name).unwrap_or_default() {
            if let Type::Enum(e) = t {
                for m in &e.members {
                    if self.btf.resolve_name(m).unwrap_or_default() == member {
                        return Ok(m.val());
                    }
                }
            }
        }
        bail!("kernel BTF: enum {name} has no {member}")
    }

    /// The argument types of tracepoint `tp` (its `btf_trace_<tp>` typedef, minus the
    /// leading `void *__data`).
    fn tracepoint_args(&self, tp: &str) -> Result<Vec<Type>> {
        let name = format!("btf_trace_{tp}");
        let td = self
            .btf
            .resolve_types_by_name(&name)
            .unwrap_or_default()
            .into_iter()
            .find_map(|t| {
                if let Type::Typedef(td) = t {
                    Some(td)
                } else {
                    None
                }
            })
            .ok_or_else(|| anyhow!("kernel BTF has no tracepoint {tp}"))?;
        let Some(Type::Ptr(p)) = self.resolve(&td)? else {
            bail!("{name}: not a pointer")
        };
        let Some(Type::FuncProto(fp)) = self.resolve(&p)? else {
            bail!("{name}: not a function")
        };
        let mut out = Vec::new();
        for param in fp.parameters.iter().skip(1) {
            if let Some(t) = self.resolve(param)? {
                out.push(t);
            }
        }
        Ok(out)
    }
}
