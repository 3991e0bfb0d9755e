// The card's engine: executes host commands against the sharer table (no frame when the table
// proves a resource unshared), broadcasts acquires to the exact sharers or to every peer,
// collects acks with a timeout, orders conflicting acquires by (stamp, node) and retries losers
// with their priority, answers peers' frames (invalidate and downgrade events are written to the
// host before the ack; with `hold`, the ack waits for the host's yield), and sends heartbeats. One thing at a time: a command, a received frame,
// an expiry or a heartbeat; the reference model is hdl-model/src/model/card.rs.

module amf_engine #(
  parameter int unsigned Inflight      = 16,
  parameter int unsigned TableSetsLog2 = 6,
  parameter int unsigned TableWays     = 4,
  // Nodes whose liveness is tracked (node ids 0..Nodes-1; frames and masks stay 8 nodes wide).
  parameter int unsigned Nodes         = 8,
  // Peers' requests sent with `hold` that wait for this host's yield at once (more are nacked;
  // 8 controllers with 3 clients each overflowed 16 into nack storms; 32 holds them).
  parameter int unsigned OwedMax       = 32,
  // Buckets of the presence filter (2^PresenceLog2 bits of block RAM; a line's bucket is its
  // resource id modulo that).
  parameter int unsigned PresenceLog2  = 14
) (
  input  logic         clk_i,
  input  logic         rst_ni,
  input  logic         clear_i,
  input  logic         enable_i,
  input  logic [2:0]   node_id_i,
  input  logic [7:0]   peers_i,
  input  logic [31:0]  epoch_i,
  input  logic [31:0]  ack_timeout_i,
  input  logic [31:0]  heartbeat_period_i,
  // commands (from amf_cmd_fetch)
  input  logic         cmd_valid_i,
  output logic         cmd_ready_o,
  input  logic [255:0] cmd_i,
  input  logic [7:0]   cpl_space_i,  // free completion slots, saturated at 255
  // completions and events (to the ring writers)
  output logic         cpl_valid_o,
  input  logic         cpl_ready_i,
  output logic [255:0] cpl_o,
  output logic         evt_valid_o,
  input  logic         evt_ready_i,
  output logic [255:0] evt_o,
  input  logic         evt_room_i,  // the event ring has a free slot
  // link: frames already checked by amf_frame_check, frames to amf_frame_tx
  input  logic         rx_valid_i,
  output logic         rx_ready_o,
  input  logic [255:0] rx_frame_i,
  output logic         tx_valid_o,
  input  logic         tx_ready_i,
  output logic [255:0] tx_frame_o,
  // counters and table state
  output logic [31:0]  frames_tx_o,
  output logic [31:0]  bad_commands_o,
  output logic [31:0]  broadcasts_o,
  output logic [31:0]  skipped_o,
  output logic [31:0]  ack_timeouts_o,
  output logic [31:0]  occupancy_o,
  output logic [31:0]  full_fallbacks_o,
  output logic         filter_on_o,
  output logic [31:0]  filtered_o,
  // something to do or wait for (a clock may stop while this is low)
  output logic         busy_o,
  // something to do now: busy_o less waits (acquires waiting for answers, timers not yet due,
  // a full event ring), so a simulation knows when the card has answered its input
  output logic         active_o
);
  localparam int unsigned IdxW         = $clog2(Inflight);
`ifndef SYNTHESIS
  // cpl_space_i saturates at 255.
  if (Inflight < 2 || Inflight > 254) begin : gen_inflight_check
    $error("amf_engine: Inflight must be 2..254");
  end
`endif
  localparam int unsigned RetriesMax   = 16;
  localparam int unsigned BackoffCycles = 64;
  localparam int unsigned DownPeriods  = 4;

  // Frame kinds and codes: the generated package enums (amf_structs_pkg), under short names.
  localparam logic [7:0] KAcqShared   = amf_structs_pkg::FrameKindAcquireShared,
                         KInvalidate  = amf_structs_pkg::FrameKindInvalidate,
                         KAck         = amf_structs_pkg::FrameKindAck,
                         KNack        = amf_structs_pkg::FrameKindNack,
                         KSearch      = amf_structs_pkg::FrameKindSearch,
                         KSearchReply = amf_structs_pkg::FrameKindSearchReply,
                         KRelease     = amf_structs_pkg::FrameKindRelease,
                         KHeartbeat   = amf_structs_pkg::FrameKindHeartbeat;
  localparam logic [7:0] OpNop        = amf_structs_pkg::OpcodeNop,
                         OpAcqShared  = amf_structs_pkg::OpcodeAcquireShared,
                         OpAcqExcl    = amf_structs_pkg::OpcodeAcquireExclusive,
                         OpRelease    = amf_structs_pkg::OpcodeRelease,
                         OpSearch     = amf_structs_pkg::OpcodeSearch,
                         OpHeartbeat  = amf_structs_pkg::OpcodeHeartbeat,
                         OpYieldShare = amf_structs_pkg::OpcodeYieldShare,
                         OpYield      = amf_structs_pkg::OpcodeYield,
                         OpMark       = amf_structs_pkg::OpcodeMark,
                         OpUnmark     = amf_structs_pkg::OpcodeUnmark,
                         OpFilterOn   = amf_structs_pkg::OpcodeFilterOn;
  localparam logic [7:0] StOk         = amf_structs_pkg::StatusOk,
                         StTimeout    = amf_structs_pkg::StatusTimeout,
                         StBadOpcode  = amf_structs_pkg::StatusBadOpcode,
                         StStaleEpoch = amf_structs_pkg::StatusStaleEpoch,
                         StConflict   = amf_structs_pkg::StatusConflict;
  localparam logic [7:0] EvInvalidate = amf_structs_pkg::EventKindInvalidate,
                         EvPeerUp     = amf_structs_pkg::EventKindPeerUp,
                         EvPeerDown   = amf_structs_pkg::EventKindPeerDown,
                         EvDowngrade  = amf_structs_pkg::EventKindDowngrade;

  // ---- frame, completion and event builders ------------------------------------------------
  // The destination mask is not part of the template: the transmit mux puts tx_mask_q there.
  function automatic logic [255:0] frame(input logic [7:0] kind,
                                         input logic [31:0] seq, input logic [31:0] stamp,
                                         input logic [63:0] res, input logic [7:0] sharers,
                                         input logic [7:0] owner);
    logic [255:0] f;
    f = '0;
    f[amf_structs_pkg::LinkFrameKindLsb+:8]      = kind;
    f[amf_structs_pkg::LinkFrameSrcLsb+:8]       = {5'd0, node_id_i};
    f[amf_structs_pkg::LinkFrameEpochLsb+:32]    = epoch_i;
    f[amf_structs_pkg::LinkFrameSeqLsb+:32]      = seq;
    f[amf_structs_pkg::LinkFrameStampLsb+:32]    = stamp;
    f[amf_structs_pkg::LinkFrameResourceLsb+:64] = res;
    f[amf_structs_pkg::LinkFrameSharersLsb+:8]   = sharers;
    f[amf_structs_pkg::LinkFrameOwnerLsb+:8]     = owner;
    frame = f;
  endfunction

  function automatic logic [255:0] completion(input logic [7:0] op, input logic [7:0] status,
                                              input logic no_broadcast, input logic untracked,
                                              input logic [4:0] retries, input logic [7:0] asked,
                                              input logic [31:0] tag, input logic [63:0] res,
                                              input logic [7:0] sharers, input logic [7:0] owner,
                                              input logic [7:0] missing, input logic [31:0] cycles);
    logic [255:0] c;
    c = '0;
    c[amf_structs_pkg::CompletionOpcodeLsb+:8]     = op;
    c[amf_structs_pkg::CompletionStatusLsb+:8]     = status;
    c[amf_structs_pkg::CompletionNoBroadcastLsb]   = no_broadcast;
    c[amf_structs_pkg::CompletionUntrackedLsb]     = untracked;
    c[amf_structs_pkg::CompletionRetriesLsb+:amf_structs_pkg::CompletionRetriesWidth] = retries;
    c[amf_structs_pkg::CompletionPeersAskedLsb+:8] = asked;
    c[amf_structs_pkg::CompletionTagLsb+:32]       = tag;
    c[amf_structs_pkg::CompletionResourceLsb+:64]  = res;
    c[amf_structs_pkg::CompletionSharersLsb+:8]    = sharers;
    c[amf_structs_pkg::CompletionOwnerLsb+:8]      = owner;
    c[amf_structs_pkg::CompletionMissingLsb+:8]    = missing;
    c[amf_structs_pkg::CompletionCyclesLsb+:32]    = cycles;
    completion = c;
  endfunction

  function automatic logic [255:0] event_entry(input logic [7:0] kind, input logic [7:0] node,
                                               input logic [31:0] epoch, input logic [63:0] res,
                                               input logic [31:0] seq, input logic hold);
    logic [255:0] e;
    e = '0;
    e[amf_structs_pkg::EventKindLsb+:8]      = kind;
    e[amf_structs_pkg::EventHoldLsb]         = hold;
    e[amf_structs_pkg::EventNodeLsb+:8]      = node;
    e[amf_structs_pkg::EventEpochLsb+:32]    = epoch;
    e[amf_structs_pkg::EventResourceLsb+:64] = res;
    e[amf_structs_pkg::EventSeqLsb+:32]      = seq;
    event_entry = e;
  endfunction

  // Liveness is kept for nodes below Nodes only.
  localparam int unsigned NodeW = Nodes > 1 ? $clog2(Nodes) : 1;
  function automatic logic tracked(input logic [2:0] node);
    tracked = {29'd0, node} < Nodes;
  endfunction

  // ---- sharer table --------------------------------------------------------------------------
  logic        tbl_req_valid, tbl_req_ready, tbl_write;
  logic [63:0] tbl_res;
  logic [7:0]  tbl_sharers;
  logic [3:0]  tbl_owner;
  logic        tbl_rsp_valid, tbl_rsp_hit, tbl_rsp_full, tbl_ready;
  logic [7:0]  tbl_rsp_sharers;
  logic [3:0]  tbl_rsp_owner;

  amf_sharer_table #(.SetsLog2(TableSetsLog2), .Ways(TableWays)) u_table (
    .clk_i,
    .rst_ni,
    .clear_i          (clear_i),
    .req_valid_i      (tbl_req_valid),
    .req_ready_o      (tbl_req_ready),
    .req_write_i      (tbl_write),
    .req_resource_i   (tbl_res),
    .req_sharers_i    (tbl_sharers),
    .req_owner_i      (tbl_owner),
    .rsp_valid_o      (tbl_rsp_valid),
    .rsp_hit_o        (tbl_rsp_hit),
    .rsp_full_o       (tbl_rsp_full),
    .rsp_sharers_o    (tbl_rsp_sharers),
    .rsp_owner_o      (tbl_rsp_owner),
    .ready_o          (tbl_ready),
    .occupancy_o      (occupancy_o),
    .full_fallbacks_o (full_fallbacks_o)
  );

  // ---- pending operations --------------------------------------------------------------------
  logic [Inflight-1:0] p_valid, p_aborted, p_wait, p_hold, p_filt;
  logic [7:0]          p_kind     [Inflight];
  logic [7:0]          p_op       [Inflight];  // the command's opcode, tag and resource
  logic [31:0]         p_tag      [Inflight];
  logic [63:0]         p_res      [Inflight];
  logic [31:0]         p_seq      [Inflight];
  logic [31:0]         p_stamp    [Inflight];
  logic [7:0]          p_targets  [Inflight];
  logic [7:0]          p_answered [Inflight];
  logic [7:0]          p_seen     [Inflight];
  logic [7:0]          p_owner    [Inflight];
  logic [7:0]          p_retries  [Inflight];
  // Cycles since the operation (or its retry) started, as of this cycle: a counter rather than a
  // start time, so a completion's `cycles` needs no subtractor behind the state logic.
  logic [31:0]         p_age      [Inflight];
  // Cycles until the ack deadline, or until the retry while waiting: a countdown loaded when the
  // timer is armed, so arming adds nothing to now_q and expiry is a zero test.
  logic [31:0]         p_left     [Inflight];

  // ---- requests owed an answer (sent with `hold`) ------------------------------------------
  localparam int unsigned OwedW = $clog2(OwedMax);
  logic [OwedMax-1:0]  o_valid, o_excl;
  logic [63:0]         o_res   [OwedMax];
  logic [2:0]          o_src   [OwedMax];
  logic [31:0]         o_seq   [OwedMax];
  logic [31:0]         o_stamp [OwedMax];

  logic [IdxW:0] used;
  always_comb begin
    used = '0;
    for (int unsigned i = 0; i < Inflight; i++) used = used + {{IdxW{1'b0}}, p_valid[i]};
  end

  logic          have_free;
  logic [IdxW-1:0] free_idx;
  always_comb begin
    have_free = 1'b0;
    free_idx  = '0;
    for (int i = Inflight - 1; i >= 0; i--) begin
      if (!p_valid[i]) begin
        have_free = 1'b1;
        free_idx  = IdxW'(i);
      end
    end
  end

  // ---- presence filter ---------------------------------------------------------------------------
  // A bit per bucket: the host may hold or be acquiring a line there. One write port (commands,
  // in SCmd) and one read port (the received frame's bucket, latched with the frame in SIdle),
  // without reset, so that it maps to block RAM; a stale set bit only costs a message, and the
  // host turns the filter on only when the bits are its truth.
  localparam int unsigned PresenceBuckets = 1 << PresenceLog2;
  logic presence_mem [PresenceBuckets];
  logic                    pres_we, pres_wdata;
  logic [PresenceLog2-1:0] pres_waddr;
  logic                    rx_present_q;  // the latched frame's bucket bit
  logic                    filter_on_q;
  logic [31:0]             filter_epoch_q;  // the epoch the filter was last turned on or off in
  logic [31:0]             filtered_q;
`ifndef SYNTHESIS
  initial begin
    for (int unsigned i = 0; i < PresenceBuckets; i++) presence_mem[i] = 1'b0;
  end
`endif

  // ---- state -----------------------------------------------------------------------------------
  typedef enum logic [4:0] {
    SIdle, SCmd, SCmdLookup, SCmdDecide, SRelease, SStart, STx, SCpl, SEvt, STableWrite,
    SRx, SRxLookup, SRxDecide, SFinish, SFinishTable, SRetryLookup, SHeartbeat, SYield
  } state_e;

  state_e        state_q, ret_q;
  logic [63:0]   now_q, next_hb_q;
  logic [31:0]   clock_q, next_seq_q;
  logic [255:0]  cmd_q, rx_q, tx_tmpl_q, out_q;
  logic [31:0]   evt_count_q;
  logic [7:0]    tx_mask_q;
  logic [IdxW-1:0] slot_q;
  logic          held_q;
  logic [7:0]    sharers_q, owner_q;
  logic [7:0]    up_q;
  logic [63:0]   last_seen_q [Nodes];
  logic [31:0]   frames_tx_q, bad_commands_q, broadcasts_q, skipped_q, ack_timeouts_q;
  logic          tbl_busy_q;  // a table request issued, response pending
  logic          rx_coming_q, rx_nack_q;
  logic [1:0]    rsp_step_q;
  logic          deferred_q;  // rx_q waits for room in the event ring
  logic [7:0]    y_sharers_q, y_owner_q;  // what a yield's acks report

  logic [7:0] me, others;
  assign me     = 8'd1 << node_id_i;
  assign others = peers_i & ~me;

  // Fields of the latched command and frame.
  logic [7:0]  c_op;
  logic [31:0] c_tag, c_epoch;
  logic [63:0] c_res;
  logic        c_hold, c_filtered;
  assign c_op    = cmd_q[amf_structs_pkg::CommandOpcodeLsb+:8];
  assign c_filtered = cmd_q[amf_structs_pkg::CommandFilteredLsb];
  assign c_hold  = cmd_q[amf_structs_pkg::CommandHoldLsb];
  assign c_tag   = cmd_q[amf_structs_pkg::CommandTagLsb+:32];
  assign c_res   = cmd_q[amf_structs_pkg::CommandResourceLsb+:64];
  assign c_epoch = cmd_q[amf_structs_pkg::CommandEpochLsb+:32];

  logic [7:0]  f_kind, f_src;
  logic [31:0] f_seq, f_stamp, f_epoch;
  logic [63:0] f_res;
  logic        f_hold, f_filtered;
  assign f_hold    = rx_q[amf_structs_pkg::LinkFrameHoldLsb];
  assign f_filtered = rx_q[amf_structs_pkg::LinkFrameFilteredLsb];
  assign f_kind    = rx_q[amf_structs_pkg::LinkFrameKindLsb+:8];
  assign f_src     = rx_q[amf_structs_pkg::LinkFrameSrcLsb+:8];
  assign f_seq     = rx_q[amf_structs_pkg::LinkFrameSeqLsb+:32];
  assign f_stamp   = rx_q[amf_structs_pkg::LinkFrameStampLsb+:32];
  assign f_epoch   = rx_q[amf_structs_pkg::LinkFrameEpochLsb+:32];
  assign f_res     = rx_q[amf_structs_pkg::LinkFrameResourceLsb+:64];

  // No 64-bit carry chain sits in front of the state logic (an iCE40 ran at 31 MHz with them
  // there): pending operations count down (`p_left`), and the heartbeat and peer-down timers are
  // compared against now_q one cycle ahead of use, in flip-flops (`*_q` below). Rearming clears
  // a flag in the same cycle, so a flag is never stale. Timers fire one cycle later than a
  // combinational comparison would, which no protocol rule notices.
  logic                hb_due_q;  // now_q had reached next_hb_q last cycle
  logic [Nodes-1:0]    down_q;    // last_seen_q[i] was older than the down window last cycle
  logic [63:0]         seen_before_q;
  logic                down_possible_q;

  // Pending entry whose timer ran out (retry due or ack deadline), lowest index first.
  logic            due_any;
  logic [IdxW-1:0] due_idx;
  always_comb begin
    due_any = 1'b0;
    due_idx = '0;
    for (int i = Inflight - 1; i >= 0; i--) begin
      if (p_valid[i] && p_left[i] == 32'd0) begin
        due_any = 1'b1;
        due_idx = IdxW'(i);
      end
    end
  end

  // Answers (ack, nack, search reply) are taken straight from the receive port in SIdle, in one
  // cycle each, so a broadcast's acks drain in as many cycles as sharers. A peer's first frame
  // posts peer_up before anything else: for an answer the card posts the event and leaves the
  // frame at the port, then takes it as usual.
  logic [7:0]  a_kind, a_src, a_sharers, a_owner;
  logic [31:0] a_seq, a_stamp, a_epoch;
  logic [63:0] a_res;
  assign a_kind    = rx_frame_i[amf_structs_pkg::LinkFrameKindLsb+:8];
  assign a_src     = rx_frame_i[amf_structs_pkg::LinkFrameSrcLsb+:8];
  assign a_seq     = rx_frame_i[amf_structs_pkg::LinkFrameSeqLsb+:32];
  assign a_stamp   = rx_frame_i[amf_structs_pkg::LinkFrameStampLsb+:32];
  assign a_epoch   = rx_frame_i[amf_structs_pkg::LinkFrameEpochLsb+:32];
  assign a_res     = rx_frame_i[amf_structs_pkg::LinkFrameResourceLsb+:64];
  assign a_sharers = rx_frame_i[amf_structs_pkg::LinkFrameSharersLsb+:8];
  assign a_owner   = rx_frame_i[amf_structs_pkg::LinkFrameOwnerLsb+:8];

  logic a_answer, a_need_up;
  assign a_answer  = a_kind == KAck || a_kind == KNack || a_kind == KSearchReply;
  assign a_need_up = !up_q[a_src[2:0]] && evt_room_i;

  // Ack matching: the pending entry with this seq that asked this source.
  logic            ack_hit;
  logic [IdxW-1:0] ack_idx;
  always_comb begin
    ack_hit = 1'b0;
    ack_idx = '0;
    for (int i = Inflight - 1; i >= 0; i--) begin
      if (p_valid[i] && !p_wait[i] && p_seq[i] == a_seq && p_targets[i][a_src[2:0]]) begin
        ack_hit = 1'b1;
        ack_idx = IdxW'(i);
      end
    end
  end
  // The answer completes its entry (every target answered).
  logic [7:0] ack_answered;
  assign ack_answered = p_answered[ack_idx] | (8'd1 << a_src[2:0]);
  // Lamport time after a received stamp: max(clock, stamp) + 1, both increments beside the
  // comparison rather than behind it.
  // The slow path (SRx) takes the same value, latched with the frame (clock_q does not change
  // in between).
  logic [31:0] clock_inc, a_stamp_inc, clock_after_a, rx_clock_q;
  assign clock_inc     = clock_q + 32'd1;
  assign a_stamp_inc   = a_stamp + 32'd1;
  assign clock_after_a = clock_q > a_stamp ? clock_inc : a_stamp_inc;

  // Conflicts of a received acquire with ours in flight (docs/protocol.md). The resource and
  // priority comparisons are made when SIdle takes the frame, into flip-flops for SRx (a 40-bit
  // priority comparison in front of SRx's updates cost an iCE40 its clock); nothing they read
  // changes in between.
  logic [Inflight-1:0] rx_same_q;  // pending i is for the frame's resource
  logic [Inflight-1:0] rx_wins_q;  // pending i comes first in the ({stamp, node}) order
  logic                exclusive_rx;
  logic                nack_rx;
  logic [Inflight-1:0] abort_rx, learn_rx;
  assign exclusive_rx = f_kind == KInvalidate;
  // The presence filter answers the latched request as the host's yield would: the host holds
  // nothing in its bucket and acquires nothing there (the non-hold path, with the table not
  // listing this node, is exactly that answer).
  logic rx_filtered;
  assign rx_filtered = f_hold && f_filtered && filter_on_q && !rx_present_q && !held_q
                       && (f_kind == KInvalidate || f_kind == KAcqShared);
  always_comb begin
    nack_rx  = 1'b0;
    abort_rx = '0;
    learn_rx = '0;
    for (int unsigned i = 0; i < Inflight; i++) begin
      if (p_valid[i] && rx_same_q[i]
          && (p_kind[i] == KAcqShared || p_kind[i] == KInvalidate)) begin
        if (exclusive_rx || p_kind[i] == KInvalidate) begin
          if (rx_wins_q[i]) nack_rx = 1'b1;
          else abort_rx[i] = 1'b1;
        end else if (!p_aborted[i]) begin
          learn_rx[i] = 1'b1;
        end
      end
    end
  end

  // The owed entry of the received frame's (resource, source), else a free one.
  logic            owed_hit, owed_free;
  logic [OwedW-1:0] owed_idx, owed_free_idx;
  always_comb begin
    owed_hit      = 1'b0;
    owed_idx      = '0;
    owed_free     = 1'b0;
    owed_free_idx = '0;
    for (int i = OwedMax - 1; i >= 0; i--) begin
      if (o_valid[i] && o_res[i] == f_res && o_src[i] == f_src[2:0]) begin
        owed_hit = 1'b1;
        owed_idx = OwedW'(i);
      end
      if (!o_valid[i]) begin
        owed_free     = 1'b1;
        owed_free_idx = OwedW'(i);
      end
    end
  end
  // The next owed entry a yield answers (resource of the command; yield_share: shared only).
  logic            yield_hit;
  logic [OwedW-1:0] yield_idx;
  always_comb begin
    yield_hit = 1'b0;
    yield_idx = '0;
    for (int i = OwedMax - 1; i >= 0; i--) begin
      if (o_valid[i] && o_res[i] == c_res && (c_op == OpYield || !o_excl[i])) begin
        yield_hit = 1'b1;
        yield_idx = OwedW'(i);
      end
    end
  end
  // A shared acquire of ours in flight for the command's resource (its requesters learn us).
  logic coming_cmd;
  always_comb begin
    coming_cmd = 1'b0;
    for (int unsigned i = 0; i < Inflight; i++) begin
      if (p_valid[i] && p_res[i] == c_res && p_kind[i] == KAcqShared && !p_aborted[i]) coming_cmd = 1'b1;
    end
  end

  logic [63:0] hb_period;
  logic        hb_on_q;  // heartbeat_period_i != 0, a cycle late (it is configuration)
  assign hb_period = {32'd0, heartbeat_period_i};

  // A peer silent for DownPeriods heartbeat periods: now > last_seen + DownPeriods * period,
  // tested as last_seen < now - DownPeriods * period with one subtractor for all peers (an adder
  // per peer costs ~450 logic cells on an iCE40), the subtraction and the comparisons in two
  // flip-flop stages.
  logic [63:0] down_window;
  logic        down_any;
  logic [2:0]  down_idx;
  logic        hb_due;
  assign down_window = 64'(DownPeriods) * hb_period;
  assign hb_due      = hb_on_q && hb_due_q;
  always_comb begin
    down_any = 1'b0;
    down_idx = '0;
    for (int i = Nodes - 1; i >= 0; i--) begin
      if (down_possible_q && others[i] && up_q[i] && down_q[i]) begin
        down_any = 1'b1;
        down_idx = 3'(i);
      end
    end
  end

  assign cmd_ready_o = state_q == SIdle && enable_i && !deferred_q && !rx_valid_i && !due_any && have_free
                       && !hb_due && !down_any
                       && cpl_space_i > 8'(used);
  assign rx_ready_o  = state_q == SIdle && enable_i && !deferred_q && !(a_answer && a_need_up);
  assign tx_valid_o  = state_q == STx && tx_mask_q != '0;
  // One frame per broadcast: dst is the mask of its targets and the link multicasts it, so the
  // fan-out costs one transmit slot whatever the number of sharers.
  assign tx_frame_o  = {tx_tmpl_q[255:24], tx_mask_q, tx_tmpl_q[15:0]};
  assign cpl_valid_o = state_q == SCpl;
  // Every completion carries the number of events posted before it, so the host can order the
  // completion and event rings (one FSM writes both, so this is exact).
  always_comb begin
    cpl_o = out_q;
    cpl_o[amf_structs_pkg::CompletionEventsBeforeLsb+:amf_structs_pkg::CompletionEventsBeforeWidth] = evt_count_q;
  end
  assign evt_valid_o = state_q == SEvt;
  assign evt_o       = out_q;
  // Only states that wait for the answer ask the table (a stray answer would be taken for the
  // next state's).
  logic rx_needs_table;
  assign rx_needs_table = !rx_nack_q && (f_kind == KAcqShared || f_kind == KInvalidate || f_kind == KSearch);
  assign tbl_req_valid = (state_q == SCmdLookup || (state_q == SRxLookup && rx_needs_table)
                          || state_q == STableWrite || state_q == SFinishTable || state_q == SRetryLookup)
                         && !tbl_busy_q;

  // Table request fields by state.
  always_comb begin
    tbl_write   = 1'b0;
    tbl_res     = c_res;
    tbl_sharers = '0;
    tbl_owner   = '0;
    unique case (state_q)
      SRxLookup:    tbl_res = f_res;
      SRetryLookup: tbl_res = p_res[slot_q];
      STableWrite: begin
        tbl_write   = 1'b1;
        tbl_res     = out_q[63:0];
        tbl_sharers = out_q[71:64];
        tbl_owner   = out_q[75:72];
      end
      SFinishTable: begin
        tbl_write = 1'b1;
        tbl_res   = p_res[slot_q];
        if (p_kind[slot_q] == KAcqShared) begin
          tbl_sharers = p_seen[slot_q] | me;
        end else begin
          tbl_sharers = me;
          tbl_owner   = 4'(node_id_i) + 4'd1;
        end
      end
      default: ;
    endcase
  end

  logic tbl_done;  // the table answered the request issued in this state
  assign tbl_done = tbl_busy_q && tbl_rsp_valid;

  // Presence writes: mark and unmark, and a `filtered` acquire accepted in its epoch.
  assign pres_we    = state_q == SCmd && c_op <= OpFilterOn
                      && (c_op == OpMark || c_op == OpUnmark
                          || ((c_op == OpAcqShared || c_op == OpAcqExcl) && c_filtered && c_epoch == epoch_i));
  assign pres_wdata = c_op != OpUnmark;
  assign pres_waddr = c_res[PresenceLog2-1:0];
  always_ff @(posedge clk_i) begin
    if (pres_we) presence_mem[pres_waddr] <= pres_wdata;
    // Read with the frame's latch in SIdle (no write happens in SIdle).
    if (state_q == SIdle && !deferred_q && rx_valid_i) rx_present_q <= presence_mem[a_res[PresenceLog2-1:0]];
  end

  always_ff @(posedge clk_i or negedge rst_ni) begin
    if (!rst_ni) begin
      state_q        <= SIdle;
      ret_q          <= SIdle;
      now_q          <= '0;
      next_hb_q      <= '0;
      hb_due_q       <= 1'b0;
      hb_on_q        <= 1'b0;
      down_q         <= '0;
      seen_before_q  <= '0;
      down_possible_q <= 1'b0;
      clock_q        <= '0;
      next_seq_q     <= 32'd1;
      cmd_q          <= '0;
      rx_q           <= '0;
      tx_tmpl_q      <= '0;
      out_q          <= '0;
      tx_mask_q      <= '0;
      slot_q         <= '0;
      held_q         <= 1'b0;
      sharers_q      <= '0;
      owner_q        <= '0;
      up_q           <= '0;
      frames_tx_q    <= '0;
      bad_commands_q <= '0;
      broadcasts_q   <= '0;
      skipped_q      <= '0;
      ack_timeouts_q <= '0;
      tbl_busy_q     <= 1'b0;
      rx_coming_q    <= 1'b0;
      rx_nack_q      <= 1'b0;
      rsp_step_q     <= '0;
      deferred_q     <= 1'b0;
      evt_count_q    <= '0;
      p_valid        <= '0;
      p_aborted      <= '0;
      p_wait         <= '0;
      p_hold         <= '0;
      p_filt         <= '0;
      filter_on_q    <= 1'b0;
      filter_epoch_q <= '0;
      filtered_q     <= '0;
      o_valid        <= '0;
      o_excl         <= '0;
      y_sharers_q    <= '0;
      y_owner_q      <= '0;
      for (int unsigned i = 0; i < OwedMax; i++) begin
        o_res[i] <= '0; o_src[i] <= '0; o_seq[i] <= '0; o_stamp[i] <= '0;
      end
      rx_same_q      <= '0;
      rx_wins_q      <= '0;
      rx_clock_q     <= '0;
      for (int unsigned i = 0; i < Nodes; i++) last_seen_q[i] <= '0;
      for (int unsigned i = 0; i < Inflight; i++) begin
        p_kind[i] <= '0; p_op[i] <= '0; p_tag[i] <= '0; p_res[i] <= '0; p_seq[i] <= '0; p_stamp[i] <= '0; p_targets[i] <= '0;
        p_answered[i] <= '0; p_seen[i] <= '0; p_owner[i] <= '0; p_retries[i] <= '0;
        p_age[i] <= '0; p_left[i] <= '0;
      end
    end else if (clear_i) begin
      state_q        <= SIdle;
      down_q         <= '0;
      evt_count_q    <= '0;
      p_valid        <= '0;
      p_wait         <= '0;
      p_aborted      <= '0;
      o_valid        <= '0;
      up_q           <= '0;
      tbl_busy_q     <= 1'b0;
      deferred_q     <= 1'b0;
      frames_tx_q    <= '0;
      bad_commands_q <= '0;
      broadcasts_q   <= '0;
      skipped_q      <= '0;
      ack_timeouts_q <= '0;
      filter_on_q    <= 1'b0;
      filtered_q     <= '0;
      now_q          <= now_q + 64'd1;
    end else begin
      now_q <= now_q + 64'd1;
      // A new membership can give the host lines without commands: the filter waits for the
      // host to say its bits are the truth again.
      if (epoch_i != filter_epoch_q) begin
        filter_on_q    <= 1'b0;
        filter_epoch_q <= epoch_i;
      end
      // Timer flags for the next cycle (the states below clear the ones they rearm).
      for (int unsigned i = 0; i < Inflight; i++) begin
        if (p_left[i] != 32'd0) p_left[i] <= p_left[i] - 32'd1;
        p_age[i]   <= p_age[i] + 32'd1;
      end
      hb_due_q        <= now_q >= next_hb_q;
      seen_before_q   <= now_q - down_window;
      down_possible_q <= hb_on_q && now_q > down_window;
      hb_on_q         <= heartbeat_period_i != 32'd0;
      for (int unsigned i = 0; i < Nodes; i++) down_q[i] <= last_seen_q[i] < seen_before_q;
      // Table handshake bookkeeping.
      if (tbl_req_valid && tbl_req_ready) tbl_busy_q <= 1'b1;
      if (tbl_done) tbl_busy_q <= 1'b0;
      unique case (state_q)
        SIdle: begin
          if (!enable_i) begin
            // nothing
          end else if (deferred_q) begin
            if (evt_room_i) begin
              deferred_q <= 1'b0;
              state_q    <= SRxLookup;
            end
          end else if (rx_valid_i && a_answer && a_need_up) begin
            // The answer stays at the port (rx_ready_o is low) until the event is written.
            up_q[a_src[2:0]] <= 1'b1;
            out_q   <= event_entry(EvPeerUp, a_src, a_epoch, 64'd0, 32'd0, 1'b0);
            ret_q   <= SIdle;
            state_q <= SEvt;
          end else if (rx_valid_i && a_answer) begin
            // Taken in one cycle; SFinish only when the entry has every answer.
            clock_q <= clock_after_a;
            if (tracked(a_src[2:0])) begin
              last_seen_q[NodeW'(a_src[2:0])] <= now_q;
              down_q[NodeW'(a_src[2:0])]      <= 1'b0;
            end
            if (ack_hit) begin
              p_answered[ack_idx] <= ack_answered;
              p_seen[ack_idx]     <= p_seen[ack_idx] | a_sharers;
              if (a_owner != 0) p_owner[ack_idx] <= a_owner;
              if (a_kind == KNack) p_aborted[ack_idx] <= 1'b1;
              if ((ack_answered & p_targets[ack_idx]) == p_targets[ack_idx]) begin
                slot_q  <= ack_idx;
                state_q <= SFinish;
              end
            end
          end else if (rx_valid_i) begin
            state_q <= SRx;
          end else if (hb_due) begin
            next_hb_q <= now_q + hb_period;
            hb_due_q  <= 1'b0;
            tx_tmpl_q <= frame(KHeartbeat, 32'd0, 32'd0, 64'd0, 8'd0, 8'd0);
            tx_mask_q <= others;
            ret_q     <= SIdle;
            state_q   <= STx;
          end else if (down_any) begin
            up_q[down_idx] <= 1'b0;
            out_q   <= event_entry(EvPeerDown, {5'd0, down_idx}, 32'd0, 64'd0, 32'd0, 1'b0);
            ret_q   <= SIdle;
            state_q <= evt_room_i ? SEvt : SIdle;
          end else if (due_any) begin
            slot_q <= due_idx;
            if (p_wait[due_idx]) begin
              state_q <= SRetryLookup;
            end else begin
              // Ack deadline passed: complete with the peers that did not answer.
              ack_timeouts_q <= ack_timeouts_q + 32'd1;
              p_valid[due_idx] <= 1'b0;
              out_q <= completion(p_op[due_idx], StTimeout, 1'b0, 1'b0, 5'd0, p_targets[due_idx],
                                  p_tag[due_idx], p_res[due_idx],
                                  8'd0, 8'd0, p_targets[due_idx] & ~p_answered[due_idx],
                                  p_age[due_idx]);
              ret_q   <= SIdle;
              state_q <= SCpl;
            end
          end else if (cmd_valid_i && cmd_ready_o) begin
            state_q <= SCmd;
          end
          // The port's frame and command are latched in every idle cycle they are offered,
          // whether taken or not: only the states after taking them read the copies, and a
          // load enable decided by the whole handshake would put that logic in front of 400
          // flip-flops. rx_q keeps a frame deferred for room in the event ring.
          if (cmd_valid_i) cmd_q <= cmd_i;
          if (!deferred_q && rx_valid_i) begin
            rx_q       <= rx_frame_i;
            rx_clock_q <= clock_after_a;
            for (int unsigned i = 0; i < Inflight; i++) begin
              rx_same_q[i] <= p_res[i] == a_res;
              rx_wins_q[i] <= {p_stamp[i], 5'd0, node_id_i} < {a_stamp, a_src};
            end
          end
        end

        // ---- commands ------------------------------------------------------------------------
        SCmd: begin
          ret_q <= SIdle;
          if (c_op > OpFilterOn) begin
            bad_commands_q <= bad_commands_q + 32'd1;
            out_q   <= completion(c_op, StBadOpcode, 1'b0, 1'b0, 5'd0, 8'd0, c_tag, c_res, 8'd0, 8'd0, 8'd0, 32'd0);
            state_q <= SCpl;
          end else if (c_op == OpMark || c_op == OpUnmark) begin
            // The bit is written by pres_we in this cycle; no epoch check (it describes this
            // host, not the membership).
            out_q   <= completion(c_op, StOk, 1'b0, 1'b0, 5'd0, 8'd0, c_tag, c_res, 8'd0, 8'd0, 8'd0, 32'd0);
            state_q <= SCpl;
          end else if (c_op != OpNop && c_epoch != epoch_i) begin
            out_q   <= completion(c_op, StStaleEpoch, 1'b0, 1'b0, 5'd0, 8'd0, c_tag, c_res, 8'd0, 8'd0, 8'd0, 32'd0);
            state_q <= SCpl;
          end else if (c_op == OpNop) begin
            out_q   <= completion(c_op, StOk, 1'b0, 1'b0, 5'd0, 8'd0, c_tag, c_res, 8'd0, 8'd0, 8'd0, 32'd0);
            state_q <= SCpl;
          end else if (c_op == OpFilterOn) begin
            // filter_epoch_q already follows epoch_i, which this command matched.
            filter_on_q <= 1'b1;
            out_q   <= completion(c_op, StOk, 1'b0, 1'b0, 5'd0, 8'd0, c_tag, c_res, 8'd0, 8'd0, 8'd0, 32'd0);
            state_q <= SCpl;
          end else if (c_op == OpHeartbeat) begin
            tx_tmpl_q <= frame(KHeartbeat, 32'd0, 32'd0, 64'd0, 8'd0, 8'd0);
            tx_mask_q <= others;
            out_q     <= completion(c_op, StOk, 1'b0, 1'b0, 5'd0, 8'd0, c_tag, c_res, 8'd0, 8'd0, 8'd0, 32'd0);
            ret_q     <= SCpl;
            state_q   <= STx;
          end else begin
            state_q <= SCmdLookup;
          end
        end
        SCmdLookup: begin
          if (tbl_done) begin
            held_q    <= tbl_rsp_hit && (tbl_rsp_sharers & me) != 0;
            sharers_q <= tbl_rsp_sharers;
            owner_q   <= {4'd0, tbl_rsp_owner};
            state_q   <= SCmdDecide;
          end
        end
        SCmdDecide: begin
          ret_q <= SIdle;
          if (c_op == OpAcqShared && held_q) begin
            skipped_q <= skipped_q + 32'd1;
            out_q   <= completion(c_op, StOk, 1'b1, 1'b0, 5'd0, 8'd0, c_tag, c_res, sharers_q, owner_q, 8'd0, 32'd0);
            state_q <= SCpl;
          end else if (c_op == OpAcqExcl && held_q
                       && (owner_q == {5'd0, node_id_i} + 8'd1 || (sharers_q & ~me) == 0)) begin
            skipped_q <= skipped_q + 32'd1;
            // Table write {res, sharers, owner} then the completion.
            out_q   <= {180'd0, 4'(node_id_i) + 4'd1, me, c_res};
            tx_tmpl_q <= completion(c_op, StOk, 1'b1, 1'b0, 5'd0, 8'd0, c_tag, c_res, me, {5'd0, node_id_i} + 8'd1,
                                    8'd0, 32'd0);
            ret_q   <= SCpl;
            state_q <= STableWrite;
          end else if (c_op == OpYield || c_op == OpYieldShare) begin
            // Yield drops our entry first; the acks then report the table as it is after.
            // yield_share: the host keeps a clean copy, tracked by the table or not; the
            // requester must learn it as a sharer.
            if (c_op == OpYieldShare && held_q) begin
              y_sharers_q <= sharers_q | me;
              y_owner_q   <= owner_q;
            end else if (c_op == OpYieldShare) begin
              y_sharers_q <= me;
              y_owner_q   <= '0;
            end else begin
              y_sharers_q <= coming_cmd ? me : 8'd0;
              y_owner_q   <= '0;
            end
            out_q   <= {180'd0, 4'd0, 8'd0, c_res};
            ret_q   <= SYield;
            state_q <= (c_op == OpYield && held_q) ? STableWrite : SYield;
          end else if (c_op == OpAcqShared || c_op == OpAcqExcl || c_op == OpSearch) begin
            if (c_op != OpSearch) broadcasts_q <= broadcasts_q + 32'd1;
            clock_q <= clock_q + 32'd1;
            state_q <= SStart;
          end else begin
            // Release: tell the recorded sharers (advisory), drop our entry, complete.
            out_q     <= {180'd0, 4'd0, 8'd0, c_res};
            tx_tmpl_q <= frame(KRelease, 32'd0, 32'd0, c_res, 8'd0, 8'd0);
            tx_mask_q <= held_q ? (sharers_q & others) : 8'd0;
            state_q   <= held_q ? SRelease : SCpl;
            if (!held_q) out_q <= completion(c_op, StOk, 1'b0, 1'b0, 5'd0, 8'd0, c_tag, c_res, 8'd0, 8'd0, 8'd0, 32'd0);
          end
        end
        SRelease: begin
          // Frames first (STx returns to STableWrite), then the table, then the completion.
          ret_q   <= STableWrite;
          state_q <= STx;
        end
        SStart: begin
          // A new pending operation in the free slot; its frames go out next.
          p_valid[free_idx]    <= 1'b1;
          p_aborted[free_idx]  <= 1'b0;
          p_wait[free_idx]     <= 1'b0;
          p_hold[free_idx]     <= c_hold && c_op != OpSearch;
          p_filt[free_idx]     <= c_filtered && c_op != OpSearch;
          p_kind[free_idx]     <= c_op == OpAcqShared ? KAcqShared : (c_op == OpAcqExcl ? KInvalidate : KSearch);
          p_op[free_idx]       <= c_op;
          p_tag[free_idx]      <= c_tag;
          p_res[free_idx]      <= c_res;
          p_seq[free_idx]      <= next_seq_q;
          p_stamp[free_idx]    <= clock_q;
          p_targets[free_idx]  <= (c_op != OpSearch && held_q) ? (sharers_q & others) : others;
          p_answered[free_idx] <= '0;
          p_seen[free_idx]     <= '0;
          p_owner[free_idx]    <= '0;
          p_retries[free_idx]  <= '0;
          p_age[free_idx]      <= 32'd1;
          p_left[free_idx]     <= ack_timeout_i;
          next_seq_q <= next_seq_q + 32'd1;
          slot_q     <= free_idx;
          tx_tmpl_q  <= frame(c_op == OpAcqShared ? KAcqShared : (c_op == OpAcqExcl ? KInvalidate : KSearch),
                              next_seq_q, clock_q, c_res, 8'd0, 8'd0)
                        | (256'(c_hold && c_op != OpSearch) << amf_structs_pkg::LinkFrameHoldLsb)
                        | (256'(c_filtered && c_op != OpSearch) << amf_structs_pkg::LinkFrameFilteredLsb);
          tx_mask_q  <= (c_op != OpSearch && held_q) ? (sharers_q & others) : others;
          ret_q      <= SFinish;  // nobody to ask: finish at once (checked there)
          state_q    <= STx;
        end
        STx: begin
          if (tx_mask_q == '0) begin
            state_q <= ret_q;
            if (ret_q == STableWrite) ret_q <= SCpl;
          end else if (tx_ready_i) begin
            tx_mask_q   <= '0;
            frames_tx_q <= frames_tx_q + 32'd1;
          end
        end
        SCpl: begin
          if (cpl_ready_i) state_q <= SIdle;
        end
        SEvt: begin
          if (evt_ready_i) begin
            state_q     <= ret_q;
            evt_count_q <= evt_count_q + 32'd1;
          end
        end
        STableWrite: begin
          if (tbl_done) begin
            state_q <= ret_q;
            // A reply follows the table write (received frames): then back to idle.
            if (ret_q == STx) ret_q <= SIdle;
            if (ret_q == SCpl) begin
              // Release and the local upgrade end with their completion (the upgrade's waits in
              // tx_tmpl_q).
              out_q <= c_op == OpRelease
                       ? completion(c_op, StOk, 1'b0, 1'b0, 5'd0, 8'd0, c_tag, c_res, 8'd0, 8'd0, 8'd0, 32'd0) : tx_tmpl_q;
            end
          end
        end

        // ---- received frames -------------------------------------------------------------------
        SRx: begin
          clock_q <= rx_clock_q;
          if (tracked(f_src[2:0])) begin
            last_seen_q[NodeW'(f_src[2:0])] <= now_q;
            down_q[NodeW'(f_src[2:0])]      <= 1'b0;
          end
          ret_q   <= SRxLookup;
          if (!up_q[f_src[2:0]] && evt_room_i) begin
            up_q[f_src[2:0]] <= 1'b1;
            out_q   <= event_entry(EvPeerUp, f_src, f_epoch, 64'd0, 32'd0, 1'b0);
            state_q <= SEvt;
          end else begin
            state_q <= SRxLookup;
          end
          rx_nack_q   <= 1'b0;
          rx_coming_q <= 1'b0;
          if (f_kind == KAcqShared || f_kind == KInvalidate) begin
            if (nack_rx) begin
              rx_nack_q <= 1'b1;
            end else begin
              p_aborted <= p_aborted | abort_rx;
              for (int unsigned i = 0; i < Inflight; i++) begin
                if (learn_rx[i]) p_seen[i] <= p_seen[i] | (8'd1 << f_src[2:0]);
              end
              rx_coming_q <= |learn_rx;
            end
          end
        end
        SRxLookup: begin
          // Answers never come here (SIdle takes them from the port); releases and heartbeats
          // need nothing more.
          if (f_kind == KAck || f_kind == KNack || f_kind == KSearchReply || f_kind == KRelease
              || f_kind == KHeartbeat) begin
            state_q <= SIdle;
          end else if (rx_nack_q) begin
            tx_tmpl_q <= frame(KNack, f_seq, f_stamp, f_res, 8'd0, 8'd0);
            tx_mask_q <= 8'd1 << f_src[2:0];
            ret_q     <= SIdle;
            state_q   <= STx;
          end else if (tbl_done) begin
            held_q    <= tbl_rsp_hit && (tbl_rsp_sharers & me) != 0;
            sharers_q <= tbl_rsp_sharers;
            owner_q   <= {4'd0, tbl_rsp_owner};
            state_q   <= SRxDecide;
          end
        end
        SRxDecide: begin
          ret_q <= SIdle;
          if (rx_filtered && rsp_step_q == 2'd0) filtered_q <= filtered_q + 32'd1;
          if (f_hold && !rx_filtered && (f_kind == KInvalidate || f_kind == KAcqShared)) begin
            // Held for the host: it hears of the request whatever the table says (it knows its
            // own lines), and the answer waits for its yield.
            if (!owed_hit && !owed_free) begin
              tx_tmpl_q <= frame(KNack, f_seq, f_stamp, f_res, 8'd0, 8'd0);
              tx_mask_q <= 8'd1 << f_src[2:0];
              state_q   <= STx;
            end else if (rsp_step_q == 2'd0) begin
              if (!evt_room_i) begin
                deferred_q <= 1'b1;
                state_q    <= SIdle;
              end else begin
                out_q      <= event_entry(f_kind == KInvalidate ? EvInvalidate : EvDowngrade, f_src, f_epoch,
                                          f_res, f_seq, 1'b1);
                rsp_step_q <= 2'd1;
                ret_q      <= SRxDecide;
                state_q    <= SEvt;
              end
            end else begin
              rsp_step_q <= 2'd0;
              o_valid[owed_hit ? owed_idx : owed_free_idx] <= 1'b1;
              o_excl[owed_hit ? owed_idx : owed_free_idx]  <= f_kind == KInvalidate;
              o_res[owed_hit ? owed_idx : owed_free_idx]   <= f_res;
              o_src[owed_hit ? owed_idx : owed_free_idx]   <= f_src[2:0];
              o_seq[owed_hit ? owed_idx : owed_free_idx]   <= f_seq;
              o_stamp[owed_hit ? owed_idx : owed_free_idx] <= f_stamp;
              if (held_q) begin
                out_q   <= {180'd0, 4'd0, f_kind == KInvalidate ? 8'd0 : (sharers_q | (8'd1 << f_src[2:0])), f_res};
                ret_q   <= SIdle;
                state_q <= STableWrite;
              end else begin
                state_q <= SIdle;
              end
            end
          end else if (f_kind == KSearch) begin
            tx_tmpl_q <= frame(KSearchReply, f_seq, f_stamp, f_res, held_q ? sharers_q : 8'd0,
                               held_q ? owner_q : 8'd0);
            tx_mask_q <= 8'd1 << f_src[2:0];
            state_q   <= STx;
          end else if (f_kind == KInvalidate) begin
            tx_tmpl_q <= frame(KAck, f_seq, f_stamp, f_res, held_q ? sharers_q : 8'd0,
                               held_q ? owner_q : 8'd0);
            tx_mask_q <= 8'd1 << f_src[2:0];
            if (!held_q) begin
              state_q <= STx;
            end else if (rsp_step_q == 2'd0) begin
              if (!evt_room_i) begin
                deferred_q <= 1'b1;  // the host must see the invalidation before we ack
                state_q    <= SIdle;
              end else begin
                // Event, then free the entry, then ack.
                out_q      <= event_entry(EvInvalidate, f_src, f_epoch, f_res, f_seq, 1'b0);
                rsp_step_q <= 2'd1;
                ret_q      <= SRxDecide;
                state_q    <= SEvt;
              end
            end else begin
              out_q      <= {180'd0, 4'd0, 8'd0, f_res};
              rsp_step_q <= 2'd0;
              ret_q      <= STx;
              state_q    <= STableWrite;
            end
          end else begin
            tx_tmpl_q <= frame(KAck, f_seq, f_stamp, f_res,
                               held_q ? (sharers_q | me) : (rx_coming_q ? me : 8'd0),
                               held_q ? owner_q : 8'd0);
            tx_mask_q <= 8'd1 << f_src[2:0];
            if (held_q) begin
              if (owner_q == {5'd0, node_id_i} + 8'd1 && rsp_step_q == 2'd0) begin
                if (!evt_room_i) begin
                  deferred_q <= 1'b1;
                  state_q    <= SIdle;
                end else begin
                  out_q   <= event_entry(EvDowngrade, f_src, f_epoch, f_res, f_seq, 1'b0);
                  rsp_step_q <= 2'd1;
                  ret_q   <= SRxDecide;
                  state_q <= SEvt;
                end
              end else begin
                out_q   <= {180'd0, 4'd0, sharers_q | (8'd1 << f_src[2:0]), f_res};
                rsp_step_q <= 2'd0;
                ret_q   <= STx;
                state_q <= STableWrite;
              end
            end else begin
              state_q <= STx;
            end
          end
        end

        // ---- completing a pending operation ----------------------------------------------------
        SFinish: begin
          state_q <= SIdle;
          if (p_valid[slot_q] && !p_wait[slot_q] && (p_answered[slot_q] & p_targets[slot_q]) == p_targets[slot_q]) begin
            if (p_aborted[slot_q]) begin
              if (p_retries[slot_q] >= 8'(RetriesMax)) begin
                p_valid[slot_q] <= 1'b0;
                out_q <= completion(p_op[slot_q], StConflict, 1'b0, 1'b0, p_retries[slot_q][4:0],
                                    8'd0, p_tag[slot_q], p_res[slot_q],
                                    8'd0, 8'd0, 8'd0, 32'd0);
                state_q <= SCpl;
              end else begin
                p_retries[slot_q] <= p_retries[slot_q] + 8'd1;
                p_aborted[slot_q] <= 1'b0;
                p_wait[slot_q]    <= 1'b1;
                p_left[slot_q]    <= 32'(BackoffCycles) * {24'd0, p_retries[slot_q] + 8'd1};
              end
            end else if (p_kind[slot_q] == KSearch) begin
              p_valid[slot_q] <= 1'b0;
              out_q <= completion(OpSearch, StOk, 1'b0, 1'b0, p_retries[slot_q][4:0], p_targets[slot_q],
                                  p_tag[slot_q], p_res[slot_q],
                                  p_seen[slot_q], p_owner[slot_q], 8'd0, p_age[slot_q]);
              state_q <= SCpl;
            end else begin
              state_q <= SFinishTable;
            end
          end
        end
        SFinishTable: begin
          if (tbl_done) begin
            p_valid[slot_q] <= 1'b0;
            out_q <= completion(p_op[slot_q], StOk,
                                1'b0, tbl_rsp_full, p_retries[slot_q][4:0], p_targets[slot_q],
                                p_tag[slot_q], p_res[slot_q],
                                p_kind[slot_q] == KAcqShared ? (p_seen[slot_q] | me) : me,
                                p_kind[slot_q] == KAcqShared ? 8'd0 : {5'd0, node_id_i} + 8'd1,
                                8'd0, p_age[slot_q]);
            state_q <= SCpl;
          end
        end
        SRetryLookup: begin
          // Back-off over: send again with the same stamp, to the sharers as now recorded.
          if (tbl_done) begin
            p_wait[slot_q]     <= 1'b0;
            p_seq[slot_q]      <= next_seq_q;
            p_answered[slot_q] <= '0;
            p_seen[slot_q]     <= '0;
            p_owner[slot_q]    <= '0;
            p_age[slot_q]      <= 32'd1;
            p_left[slot_q]     <= ack_timeout_i;
            next_seq_q <= next_seq_q + 32'd1;
            p_targets[slot_q] <= (tbl_rsp_hit && (tbl_rsp_sharers & me) != 0) ? (tbl_rsp_sharers & others) : others;
            tx_mask_q <= (tbl_rsp_hit && (tbl_rsp_sharers & me) != 0) ? (tbl_rsp_sharers & others) : others;
            tx_tmpl_q <= frame(p_kind[slot_q], next_seq_q, p_stamp[slot_q],
                               p_res[slot_q], 8'd0, 8'd0)
                         | (256'(p_hold[slot_q]) << amf_structs_pkg::LinkFrameHoldLsb)
                         | (256'(p_filt[slot_q]) << amf_structs_pkg::LinkFrameFilteredLsb);
            ret_q   <= SFinish;
            state_q <= STx;
          end
        end
        SYield: begin
          // One ack per owed request of the resource, then the completion.
          if (yield_hit) begin
            o_valid[yield_idx] <= 1'b0;
            tx_tmpl_q <= frame(KAck, o_seq[yield_idx], o_stamp[yield_idx], o_res[yield_idx],
                               o_excl[yield_idx] ? 8'd0 : y_sharers_q, o_excl[yield_idx] ? 8'd0 : y_owner_q);
            tx_mask_q <= 8'd1 << o_src[yield_idx];
            ret_q     <= SYield;
            state_q   <= STx;
          end else begin
            out_q   <= completion(c_op, StOk, 1'b0, 1'b0, 5'd0, 8'd0, c_tag, c_res, 8'd0, 8'd0, 8'd0, 32'd0);
            state_q <= SCpl;
          end
        end
        SHeartbeat: state_q <= SIdle;
        default: state_q <= SIdle;
      endcase
    end
  end

  // Busy covers active (a clock stopped while busy is low would strand the work), and adds
  // what only waits: acquires for their answers, a frame for room, heartbeats for their time.
  assign active_o       = state_q != SIdle || rx_valid_i || cmd_valid_i || due_any || hb_due || down_any
                          || (deferred_q && evt_room_i);
  assign busy_o         = active_o || |p_valid || deferred_q || (enable_i && hb_on_q);
  assign frames_tx_o    = frames_tx_q;
  assign bad_commands_o = bad_commands_q;
  assign broadcasts_o   = broadcasts_q;
  assign skipped_o      = skipped_q;
  assign ack_timeouts_o = ack_timeouts_q;
  assign filter_on_o    = filter_on_q;
  assign filtered_o     = filtered_q;

  logic unused;
  assign unused = ^{a_src[7:3], tbl_ready, cmd_q[255:160], cmd_q[31:10], rx_q[255:192], rx_q[31:26], rx_q[23:16],
                    out_q[255:76]};

endmodule
